"""Writing a synthetic world to disk: H.264 videos, ground-truth part maps, split lists.

Layout of a world folder::

    world.json                  what was generated (see :class:`WorldSpec`) + class names + versions
    classes.txt                 action names, one per line (line k = label k)
    train.txt, test.txt         "<video path> <label>" per line (the ``video_list`` dataset reads them)
    videos/<subset>/<action>/<subset>_<index:05d>.mp4
    parts/                      a :mod:`hcframe_video.partmaps` store, kind "labels", full video
                                resolution, LIP label ids, keyed by the video paths above

Videos are H.264 (libx264, yuv420p, constant rate factor ``crf``, one encoder thread, x264's C
code paths (``asm=0``), bit-exact muxing), so with the same PyAV/FFmpeg/x264 build the same world gives the same file bytes. 4:2:0
chroma subsampling blurs colours across part edges by up to one pixel; inside parts colours survive
to within a few grey levels at the default ``crf``.

A world is built into a temporary sibling folder and renamed into place at the end, so a reader
never sees a half-written world, and two processes that build the same world at once both end up
using one complete copy (the loser of the rename discards its own).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import attrs
import av
import numpy as np

from hcframe_video.partmaps import LIP_LABELS, PartMapWriter
from hcframe_video.synthetic.world import ACTION_NAMES, WorldConfig, background_bank, render_video, video_label

__all__ = [
    "GENERATOR_VERSION",
    "WORLD_FILE",
    "WorldSpec",
    "build_world",
    "default_cache_root",
    "encode_h264",
    "read_world_spec",
    "video_path",
]

#: Bump when the generator's output changes for the same spec (changes every cache key).
GENERATOR_VERSION = 2
WORLD_FILE = "world.json"
WORLD_FORMAT = "hcframe-synthetic-world"
PARTS_DIR = "parts"
SUBSETS = ("train", "test")


@attrs.frozen
class WorldSpec:
    """Everything a generated world depends on: the look (``config``), the seed, split sizes and
    the video encoding (frame rate, H.264 constant rate factor: 0 = lossless luma, 51 = worst)."""

    config: WorldConfig = WorldConfig()
    seed: int = 0
    num_train: int = 1000
    num_test: int = 500
    fps: int = 8
    crf: int = 10

    def __attrs_post_init__(self) -> None:
        if self.num_train < 0 or self.num_test < 0 or self.num_train + self.num_test == 0:
            raise ValueError(f"num_train/num_test must be >= 0 and not both 0, got {self.num_train}/{self.num_test}")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps must be in 1..120, got {self.fps}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {self.crf}")

    def count(self, subset: str) -> int:
        return self.num_train if subset == "train" else self.num_test

    def as_json(self) -> dict[str, Any]:
        return {
            "generator_version": GENERATOR_VERSION,
            "config": attrs.asdict(self.config),
            "seed": self.seed,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "fps": self.fps,
            "crf": self.crf,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorldSpec":
        return cls(
            config=WorldConfig(**data["config"]),
            seed=int(data["seed"]),
            num_train=int(data["num_train"]),
            num_test=int(data["num_test"]),
            fps=int(data["fps"]),
            crf=int(data["crf"]),
        )

    def key(self) -> str:
        """A short hash naming this world in the cache."""
        blob = json.dumps(self.as_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def parts_identity(self) -> dict[str, Any]:
        """The identity recorded in (and checked against) the ground-truth part store."""
        return {"producer": "synthetic ground truth", "generator": "hcframe_video.synthetic", "world": self.as_json()}


def default_cache_root() -> Path:
    """``$HCFRAME_CACHE`` or ``~/.cache/hcframe``."""
    env = os.environ.get("HCFRAME_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hcframe"


def video_path(subset: str, index: int, num_classes: int = len(ACTION_NAMES)) -> str:
    """Path of a video relative to the world folder (also its id in the part store)."""
    action = ACTION_NAMES[video_label(subset, index, num_classes)]
    return f"videos/{subset}/{action}/{subset}_{index:05d}.mp4"


def encode_h264(frames: np.ndarray, fps: int, crf: int) -> bytes:
    """RGB uint8 ``[T, H, W, 3]`` (even H, W) -> the bytes of an H.264 MP4 file (deterministic)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 4:2:0 needs even frame sizes, got {width}x{height}")
    buffer = io.BytesIO()
    # Determinism: "+bitexact" keeps library version strings and times out of the muxer; threads=1
    # keeps x264's decisions independent of scheduling; asm=0 because x264's SIMD paths gave
    # run-to-run different bitstreams for identical 32x32 input in this build (about 1 video in 5;
    # the C paths never did, at ~1.4x the encoding time). The RGB -> YUV 4:2:0 conversion runs in
    # one swscale thread for the same reason.
    with av.open(buffer, "w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(
            "libx264", rate=fps,
            options={"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "asm=0"},
        )  # fmt: skip
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p", threads=1)
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def read_world_spec(root: str | os.PathLike[str]) -> WorldSpec:
    """The spec of the world stored at ``root`` (from its ``world.json``)."""
    path = Path(root) / WORLD_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; {root} is not a synthetic world (make one with hcframe make-synthetic)") from None
    if data.get("format") != WORLD_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r} is not {WORLD_FORMAT!r}")
    return WorldSpec.from_json(data["spec"])


# --- building ------------------------------------------------------------------------------------
def _write_videos(folder: str, spec_json: dict[str, Any], jobs: list[tuple[str, int]]) -> int:
    """Generate and write ``jobs`` [(subset, index)] into ``folder`` (runs in worker processes)."""
    spec = WorldSpec.from_json(spec_json)
    root = Path(folder)
    bank = background_bank(spec.config, spec.seed)
    writer = PartMapWriter(
        root / PARTS_DIR, "labels", LIP_LABELS, spec.parts_identity(),
        resolution=(spec.config.height, spec.config.width),
    )  # fmt: skip
    for subset, index in jobs:
        video = render_video(spec.config, spec.seed, subset, index, bank)
        rel = video_path(subset, index)
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_h264(video.frames, spec.fps, spec.crf))
        writer.write_video(rel, video.labels)
    return len(jobs)


def _describe_world(spec: WorldSpec) -> dict[str, Any]:
    from hcframe_video import __version__

    return {
        "format": WORLD_FORMAT,
        "spec": spec.as_json(),
        "class_names": list(ACTION_NAMES),
        "label_names": list(LIP_LABELS),
        "flip_preserves_label": True,
        "versions": {"hcframe_video": __version__, "av": av.__version__, "numpy": np.__version__},
    }


def build_world(
    root: str | os.PathLike[str],
    spec: WorldSpec,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 25,
) -> Path:
    """Generate the world ``spec`` at ``root`` unless a complete one is already there.

    ``workers`` > 1 generates in that many processes (the result does not depend on it);
    ``progress(done, total)`` is called as videos finish. Returns ``root``. Raises ValueError if
    ``root`` holds a different world or other files.
    """
    root = Path(root).expanduser().absolute()
    if check_world_root(root, spec):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    try:
        # meta.json of the part store first, so workers only check it
        PartMapWriter(tmp / PARTS_DIR, "labels", LIP_LABELS, spec.parts_identity(),
                      resolution=(spec.config.height, spec.config.width))  # fmt: skip
        jobs = [(subset, i) for subset in SUBSETS for i in range(spec.count(subset))]
        chunks = [jobs[k : k + chunk] for k in range(0, len(jobs), chunk)]
        done = 0
        if progress:
            progress(0, len(jobs))
        if workers <= 1 or len(chunks) <= 1:
            for part in chunks:
                done += _write_videos(str(tmp), spec.as_json(), part)
                if progress:
                    progress(done, len(jobs))
        else:
            # fork keeps start-up cheap; the workers use only numpy and PyAV (no torch threads)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                futures = [pool.submit(_write_videos, str(tmp), spec.as_json(), part) for part in chunks]
                for future in concurrent.futures.as_completed(futures):
                    done += future.result()
                    if progress:
                        progress(done, len(jobs))
        for subset in SUBSETS:
            lines = [f"{video_path(subset, i)} {video_label(subset, i, len(ACTION_NAMES))}\n" for i in range(spec.count(subset))]
            (tmp / f"{subset}.txt").write_text("".join(lines))
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in ACTION_NAMES))
        # world.json last: its presence marks a complete world
        (tmp / WORLD_FILE).write_text(json.dumps(_describe_world(spec), indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, root)  # atomic; replaces root only if it is an empty folder
        except OSError:
            if not (root / WORLD_FILE).exists():
                raise
            _check_existing(root, spec)  # another process finished the same world first
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def check_world_root(root: str | os.PathLike[str], spec: WorldSpec) -> bool:
    """Whether ``root`` already holds the world ``spec`` (``False``: nothing there yet, it can be
    generated). Raises ValueError, generating nothing, when ``root`` is a file, holds another
    world, or holds other files."""
    root = Path(root).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: is a file; give a folder for the world (or leave root empty for the cache)")
    if (root / WORLD_FILE).exists():
        _check_existing(root, spec)
        return True
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: exists, is not empty and has no {WORLD_FILE}; choose a new or empty folder")
    return False


def _check_existing(root: Path, spec: WorldSpec) -> None:
    existing = read_world_spec(root)
    if existing != spec:
        theirs, ours = existing.as_json(), spec.as_json()
        diff = _differences(theirs, ours)
        raise ValueError(
            f"{root} holds another synthetic world ({'; '.join(diff)}); pass the same world "
            "arguments, or another root"
        )


def _differences(theirs: dict[str, Any], ours: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, prefix + key + "."))
        elif a != b:
            out.append(f"{prefix}{key}: stored {a!r}, requested {b!r}")
    return out
