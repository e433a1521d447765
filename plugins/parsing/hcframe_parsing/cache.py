"""The teacher cache: a teacher's soft targets for every frame training can sample, on disk.

A cache is a part-map store (:mod:`hcframe_video.partmaps`, the format the synthetic world's ground
truth uses), so training reads it through the same :class:`~hcframe_video.partmaps.PartMapStore`
with data workers. Its ``identity`` (in ``meta.json``) is::

    {"teacher": teacher.identity(), "resolution": [h, w], "kind": ..., "k": ..., "every_k": ...}

so a cache made by another checkpoint, input size, label set, precision (the teacher's
``precision`` option, part of its identity), resolution or frame step is refused
both when resuming a build (:func:`cache_teacher`) and when training opens it
(:func:`open_teacher_cache`, which compares the ``teacher`` part: resolution and frame step are
properties of the cache the reader adapts to).

Stored values (see the partmaps module for the exact encodings): ``kind="topk"`` keeps the ``k``
most probable classes per pixel with probabilities renormalised over those ``k`` and quantised to
1/255 (read-back error < 1/255 against the renormalised top-k); ``"logits"`` stores float16 logits
(softmax on read); ``"labels"`` stores the argmax.

Building is resumable and safe to interrupt: every video is written atomically, and a rerun skips
the videos already present.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import hcframe
from hcframe_video.decode import DecodeError, decode_frames, probe_video
from hcframe_video.partmaps import KINDS, PartMapError, PartMapStore, PartMapWriter

__all__ = ["CacheReport", "cache_identity", "cache_teacher", "identity_differences", "open_teacher_cache", "run_teacher"]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _accepts_output_size(teacher: torch.nn.Module) -> bool:
    try:
        return "output_size" in inspect.signature(teacher.forward).parameters
    except (TypeError, ValueError):
        return False


def run_teacher(
    teacher: hcframe.Teacher,
    frames: Tensor,
    output_size: Sequence[int],
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Teacher logits for RGB ``[0, 1]`` frames ``[N, 3, H, W]``, float32 ``[N, K, *output_size]``.

    Runs without gradients in chunks of ``batch_size`` frames on ``device`` (default: the frames'
    device), in the teacher's own precision: the built-in teachers apply their ``precision``
    option themselves (float32 unless ``"bf16"`` is asked for; see :mod:`hcframe_parsing.precision`),
    so nothing here lowers it. The output grid is asked of the teacher when its ``forward`` takes
    ``output_size``; otherwise its logits are bilinearly resized.
    """
    device = torch.device(device) if device is not None else frames.device
    size = (int(output_size[0]), int(output_size[1]))
    pass_size = _accepts_output_size(teacher)
    outs = []
    with torch.no_grad():
        for start in range(0, frames.shape[0], batch_size):
            chunk = frames[start : start + batch_size].to(device, non_blocking=True).float()
            logits = teacher(chunk, output_size=size) if pass_size else teacher(chunk)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            outs.append(logits.float())
    return torch.cat(outs, dim=0)


def cache_identity(teacher: hcframe.Teacher, resolution: Sequence[int], kind: str, k: int | None, every_k: int) -> dict[str, Any]:
    """The identity a cache of ``teacher`` with these settings is stored under (the teacher's
    precision is in ``teacher.identity()``)."""
    return {
        "teacher": teacher.identity(),
        "resolution": [int(resolution[0]), int(resolution[1])],
        "kind": kind,
        "k": k,
        "every_k": int(every_k),
    }


def identity_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["teacher.input_size: [473, 473] -> [512, 512]", ...]``: where two identities differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += identity_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if _canonical(old) == _canonical(new):
        return []
    def short(v: Any) -> str:
        text = _canonical(v)
        return text if len(text) <= 40 else text[:37] + "..."
    return [f"{prefix.rstrip('.')}: {short(old)} -> {short(new)}"]


def open_teacher_cache(path: str | Path, teacher: hcframe.Teacher) -> PartMapStore:
    """Open the cache at ``path`` for ``teacher``; refuse (``PartMapError``, one line) a cache
    that another teacher made, naming the identity fields that differ."""
    store = PartMapStore(path)
    stored = store.identity.get("teacher") if isinstance(store.identity, dict) else None
    current = json.loads(_canonical(teacher.identity()))
    if stored is None or _canonical(stored) != _canonical(current):
        differ = identity_differences(stored or {}, current, "teacher.")
        raise PartMapError(
            f"teacher cache {path} is stale or not a teacher cache (cache -> this teacher: "
            f"{'; '.join(differ[:4])}); rebuild it with `hcframe cache-teacher` into a new folder, or delete this one"
        )
    if tuple(store.label_names) != tuple(teacher.label_names):
        raise PartMapError(f"teacher cache {path}: labels {list(store.label_names)} != teacher labels {list(teacher.label_names)}")
    return store


@attrs.frozen
class CacheReport:
    """What one :func:`cache_teacher` call did."""

    root: str
    written: list[str]
    skipped: list[str]
    failed: list[tuple[str, str]]  # (video id, reason)
    frames: int


def _frame_chunks(indices: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


def cache_teacher(
    teacher: hcframe.Teacher,
    dataset: hcframe.VideoDataset,
    out_dir: str | Path,
    every_k: int = 1,
    resolution: Sequence[int] = (64, 64),
    kind: str = "topk",
    k: int | None = 4,
    batch_size: int = 32,
    device: str = "cpu",
    chunk_frames: int = 256,
    progress: bool = True,
    on_video: Callable[[str], None] | None = None,
) -> CacheReport:
    """Run ``teacher`` over frames ``0, every_k, 2*every_k, ...`` of every video of ``dataset`` and
    store its outputs at ``resolution`` (``[h, w]``, covering the whole frame) in ``out_dir``.

    Videos are decoded with :func:`hcframe_video.decode.decode_frames` (the frame numbering the
    datasets use), ``chunk_frames`` at a time, and the teacher runs ``batch_size`` frames at a
    time on ``device``. Videos already in the cache are skipped; a video that cannot be decoded is
    reported in ``failed`` and left out (rerun after fixing it). ``kind``/``k``: see the module
    docstring (``k`` only for ``"topk"``; it is clipped to the number of classes).
    """
    if every_k < 1:
        raise ValueError(f"every_k must be >= 1, got {every_k}")
    if len(resolution) != 2 or min(resolution) < 1:
        raise ValueError(f"resolution must be [height, width] >= 1, got {list(resolution)}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "topk":
        if k is None or k < 1:
            raise ValueError(f"k must be >= 1 for kind 'topk', got {k}")
        k = min(int(k), teacher.num_classes)
    else:
        k = None
    dev = torch.device(device)
    teacher = teacher.freeze().to(dev)
    size = (int(resolution[0]), int(resolution[1]))
    identity = cache_identity(teacher, size, kind, k, every_k)
    if (Path(out_dir) / "meta.json").is_file():
        existing = PartMapStore(out_dir).identity
        differ = identity_differences(existing, json.loads(_canonical(identity)))
        if differ:
            raise PartMapError(
                f"cannot resume teacher cache {out_dir}: it was built with other settings or another teacher "
                f"(cache -> now: {'; '.join(differ[:4])}); use a new folder or delete this one"
            )
    writer = PartMapWriter(out_dir, kind=kind, label_names=teacher.label_names, identity=identity, k=k, resolution=size)

    written: list[str] = []
    skipped: list[str] = []
    failed: list[tuple[str, str]] = []
    total_frames = 0
    bar = _progress(progress, len(dataset))
    with bar:
        for i in range(len(dataset)):
            video_id = dataset.video_id(i)
            if writer.has_video(video_id):
                skipped.append(video_id)
                bar.advance()
                continue
            path = dataset.video_path(i)
            try:
                info = probe_video(path)
                wanted = list(range(0, info.num_frames, every_k))
                maps: dict[int, np.ndarray] = {}
                for chunk in _frame_chunks(wanted, chunk_frames):
                    rgb, unique = decode_frames(path, chunk, info=info)
                    frames = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0)
                    logits = run_teacher(teacher, frames, size, batch_size=batch_size, device=dev).cpu()
                    maps.update(zip(unique, _encode(logits, kind)))
            except (DecodeError, ValueError) as exc:
                failed.append((video_id, f"{path}: {exc}"))
                bar.advance()
                continue
            writer.write_video(video_id, maps)
            written.append(video_id)
            total_frames += len(maps)
            if on_video is not None:
                on_video(video_id)
            bar.advance()
    return CacheReport(root=str(out_dir), written=written, skipped=skipped, failed=failed, frames=total_frames)


def _encode(logits: Tensor, kind: str) -> list[np.ndarray]:
    if kind == "logits":
        return list(logits.numpy())
    if kind == "labels":
        return list(logits.argmax(dim=1).to(torch.uint8).numpy())
    return list(torch.softmax(logits, dim=1).numpy())


def _progress(enabled: bool, total: int) -> Any:
    from hcframe.progress import ProgressBar

    return ProgressBar("cache-teacher", total, enabled=enabled, unit="videos")
