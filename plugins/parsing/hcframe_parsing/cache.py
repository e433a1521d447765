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

Stored values (each kind is a codec of :mod:`hcframe_video.partmaps`, :data:`~hcframe_video.partmaps.CODECS`,
which also turns the teacher's logits into what is stored): ``kind="topk"`` keeps the ``k``
most probable classes per pixel with probabilities renormalised over those ``k`` and quantised to
1/255 (read-back error < 1/255 against the renormalised top-k); ``"logits"`` stores float16 logits
(softmax on read); ``"labels"`` stores the argmax.

Which frames
------------
A cache with step ``every_k`` holds frames ``0, k, 2k, ...`` and each video's last frame
(:func:`cached_frame_indices`). Training reads a frame the cache does not hold as the nearest one it
does (ties: the earlier; :meth:`PartMapStore.nearest_stored`). With ``every_k`` equal to the
dataset's clip ``stride`` (``cache-teacher --every-k stride``) every frame of a clip lies at the
same offset ``start mod k`` from a stored frame, so a clip's targets are those of the same clip
shifted by at most ``k // 2`` frames, all frames alike, and exact when ``start`` is a multiple of
``k``; a clip of a video shorter than its span repeats the last frame, which is stored. The plugin
README gives the measured agreement with every-frame targets.

Building at scale
-----------------
:func:`cache_teacher` decodes videos (optionally in worker processes) into one
:class:`FrameBatcher`, which runs the teacher on batches of exactly ``batch_size`` frames filled
across videos, so a frame's outputs do not depend on its batch-mates. Under ``torchrun`` each rank
caches the videos :func:`shard_indices` gives it (any number of nodes, one shared folder), and
the result is the same files, bit for bit, as one process writes when it runs the same kernels
(same device type and batch size; on CPUs, the same number of threads per process). Building is resumable and safe
to interrupt: every video is written atomically, and a rerun skips the videos whose file is
intact (read back against the CRC-32s and sizes the zip format recorded when it was written) and
holds the expected frame pattern; damaged ones are made again.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import attrs
import numpy as np
import torch
from torch import Tensor

import hcframe
from hcframe_video.decode import DecodeError, decode_frames, probe_video
from hcframe_video.partmaps import CODECS, PartMapError, PartMapStore, PartMapWriter

__all__ = [
    "CacheReport",
    "FrameBatcher",
    "FrameChunk",
    "cache_identity",
    "cache_teacher",
    "cached_frame_indices",
    "frame_step_mismatch",
    "frame_chunks",
    "identity_differences",
    "iter_frame_chunks",
    "open_teacher_cache",
    "run_teacher",
    "shard_indices",
]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


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
    so nothing here lowers it. The output grid is asked of the teacher (``output_size``, part of
    the :class:`hcframe.Teacher` contract); logits of another shape are refused.
    """
    device = torch.device(device) if device is not None else frames.device
    size = (int(output_size[0]), int(output_size[1]))
    outs = []
    with torch.no_grad():
        for start in range(0, frames.shape[0], batch_size):
            chunk = frames[start : start + batch_size].to(device, non_blocking=True).float()
            logits = teacher(chunk, output_size=size)
            expected = (chunk.shape[0], teacher.num_classes, *size)
            if tuple(logits.shape) != expected:
                raise ValueError(
                    f"teacher {type(teacher).__name__} returned logits {list(logits.shape)} for output_size {list(size)}; "
                    f"a teacher's forward(frames, output_size) must return {list(expected)}"
                )
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


def frame_step_mismatch(store: PartMapStore, dataset: Any) -> str | None:
    """A one-line note when ``store`` holds every k-th frame (k > 1) but ``dataset``'s clips step
    by a ``stride`` that is not a multiple of k: clip frames then share stored frames (stride 1
    and k 2 read frames 0, 0, 2, 2, ...). ``None`` when the steps fit or are unknown."""
    every_k = store.identity.get("every_k", 1) if isinstance(store.identity, dict) else 1
    stride = getattr(dataset, "stride", None)
    if not isinstance(every_k, int) or every_k <= 1 or not isinstance(stride, int) or stride % every_k == 0:
        return None
    return (
        f"teacher cache {store.root} holds one frame in {every_k} (every_k) but the dataset's clips step {stride} "
        f"frame(s): clip frames read the nearest stored frame, several the same one; rebuild it with "
        f"--every-k stride (or a divisor of {stride}) for distinct targets"
    )


@attrs.frozen
class CacheReport:
    """What one :func:`cache_teacher` call did (summed over all ranks when distributed)."""

    root: str
    written: list[str]
    skipped: list[str]
    failed: list[tuple[str, str]]  # (video id, reason)
    frames: int
    seconds: float = 0.0  # wall time of the call
    world_size: int = 1

    @property
    def frames_per_second(self) -> float:
        """Frames written per second of wall time (decoding, teacher, encoding and writing)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# --- which frames, which videos --------------------------------------------------------------------
def cached_frame_indices(num_frames: int, every_k: int) -> list[int]:
    """The frames a cache with step ``every_k`` holds for a video of ``num_frames`` frames:
    ``0, k, 2k, ...`` and the last frame (clips of a video shorter than their span repeat the last
    frame, so training samples it; see :func:`hcframe_video.clips.clip_frame_indices`)."""
    frames = list(range(0, num_frames, every_k))
    if frames and frames[-1] != num_frames - 1:
        frames.append(num_frames - 1)
    return frames


def shard_indices(num_videos: int, rank: int, world_size: int) -> list[int]:
    """The dataset indices rank ``rank`` of ``world_size`` caches: ``rank, rank + world_size, ...``.
    Every video belongs to exactly one rank, whatever the number of nodes."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return list(range(rank, num_videos, world_size))


def _holds_cached_frames(frames: np.ndarray, every_k: int) -> bool:
    """Whether stored ``frames`` are ``0, k, 2k, ...`` (optionally ending with a last frame that
    is not a multiple of ``k``): the pattern of :func:`cached_frame_indices`."""
    steps = np.arange(len(frames), dtype=np.int64) * every_k
    if np.array_equal(frames, steps):
        return True
    return len(frames) >= 2 and np.array_equal(frames[:-1], steps[:-1]) and steps[-2] < frames[-1] < steps[-1]


# --- decoding --------------------------------------------------------------------------------------
@attrs.frozen(eq=False)
class FrameChunk:
    """Decoded frames of one video (``chunk_frames`` at most), or the reason it cannot be read.

    ``pixels``: uint8 RGB ``[n, H, W, 3]`` of the frame numbers ``frames``; ``last``: no more
    chunks of this video follow; ``error``: set (and ``pixels`` ``None``) when decoding failed."""

    index: int
    video_id: str
    frames: list[int]
    pixels: np.ndarray | None
    last: bool
    error: str | None = None


def iter_frame_chunks(
    dataset: hcframe.VideoDataset, indices: Sequence[int], every_k: int, chunk_frames: int
) -> Iterator[FrameChunk]:
    """Decode the cached frames (:func:`cached_frame_indices`) of the videos ``indices``, video
    after video, ``chunk_frames`` at a time."""
    for i in indices:
        video_id, path = dataset.video_id(i), dataset.video_path(i)
        try:
            info = probe_video(path)
            wanted = cached_frame_indices(info.num_frames, every_k)
            starts = range(0, len(wanted), chunk_frames)
            for n, start in enumerate(starts):
                rgb, unique = decode_frames(path, wanted[start : start + chunk_frames], info=info)
                yield FrameChunk(i, video_id, list(unique), rgb, last=n == len(starts) - 1)
        except (DecodeError, ValueError) as exc:
            yield FrameChunk(i, video_id, [], None, last=True, error=f"{path}: {exc}")


class _ChunkStream(torch.utils.data.IterableDataset):
    """:func:`iter_frame_chunks` split over DataLoader workers (each decodes whole videos)."""

    def __init__(self, dataset: hcframe.VideoDataset, indices: Sequence[int], every_k: int, chunk_frames: int) -> None:
        self.dataset, self.indices, self.every_k, self.chunk_frames = dataset, list(indices), every_k, chunk_frames

    def __iter__(self) -> Iterator[FrameChunk]:
        info = torch.utils.data.get_worker_info()
        mine = self.indices if info is None else self.indices[info.id :: info.num_workers]
        return iter_frame_chunks(self.dataset, mine, self.every_k, self.chunk_frames)


def _as_is(item: Any) -> Any:
    return item


def frame_chunks(
    dataset: hcframe.VideoDataset, indices: Sequence[int], every_k: int, chunk_frames: int, workers: int = 0
) -> Iterable[FrameChunk]:
    """The chunks of :func:`iter_frame_chunks`, decoded in ``workers`` background processes (0: in
    this process). With workers, chunks of different videos arrive interleaved; a video's own
    chunks stay in order."""
    if workers <= 0 or len(indices) == 0:
        return iter_frame_chunks(dataset, indices, every_k, chunk_frames)
    stream = _ChunkStream(dataset, indices, every_k, chunk_frames)
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=min(workers, len(indices)), collate_fn=_as_is, prefetch_factor=2
    )


# --- the teacher on batches that span videos -------------------------------------------------------
FrameKey = tuple[str, int]  # (video id, frame number)


class FrameBatcher:
    """Runs a teacher on batches of exactly ``batch_frames`` frames drawn from any videos.

    Frames are queued per frame size (a batch needs one size); a queue that reaches
    ``batch_frames`` frames runs at once, and :meth:`flush` runs what is left, each partial batch
    padded with black frames to ``batch_frames``. Every forward therefore has the same batch size,
    so a frame's outputs do not depend on which frames shared its batch (kernels may take another
    path for another batch size, e.g. 1): one process and several ranks, which batch different
    frames together, write the same bits (on CPUs, with the same number of threads per process). When more than ``max_queued`` frames wait in queues of
    several sizes (videos of many sizes), the fullest queue runs padded.

    ``encode(logits [n, K, h, w])`` turns the teacher's outputs (on ``device``) into one stored
    value per frame (a part-map codec's ``from_logits``); :meth:`add` and :meth:`flush` return ``[(key, value), ...]`` for the frames
    that ran.
    """

    def __init__(
        self,
        teacher: hcframe.Teacher,
        batch_frames: int,
        output_size: Sequence[int],
        device: torch.device,
        encode: Callable[[Tensor], list[Any]],
        max_queued: int | None = None,
    ) -> None:
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        self.teacher = teacher
        self.batch_frames = batch_frames
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.device = device
        self.encode = encode
        self.max_queued = max_queued if max_queued is not None else 4 * batch_frames
        self.forwards = 0
        self._queues: dict[tuple[int, int], list[tuple[FrameKey, Tensor]]] = {}

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def add(self, video_id: str, frames: Sequence[int], pixels: np.ndarray | Tensor) -> list[tuple[FrameKey, Any]]:
        """Queue uint8 RGB ``pixels`` ``[n, H, W, 3]`` of ``video_id``'s frame numbers ``frames``."""
        pixels = torch.as_tensor(pixels)
        if pixels.dim() != 4 or pixels.shape[-1] != 3 or pixels.shape[0] != len(frames):
            raise ValueError(f"{video_id}: expected uint8 pixels [{len(frames)}, H, W, 3], got {list(pixels.shape)}")
        queue = self._queues.setdefault((int(pixels.shape[1]), int(pixels.shape[2])), [])
        queue.extend(((video_id, int(f)), p) for f, p in zip(frames, pixels))
        done: list[tuple[FrameKey, Any]] = []
        for size in list(self._queues):
            while len(self._queues.get(size, ())) >= self.batch_frames:
                done += self._run(size)
        while self.queued > self.max_queued:
            done += self._run(max(self._queues, key=lambda s: len(self._queues[s])))
        return done

    def flush(self) -> list[tuple[FrameKey, Any]]:
        """Run every queued frame (partial batches padded)."""
        done: list[tuple[FrameKey, Any]] = []
        for size in list(self._queues):
            while self._queues.get(size):
                done += self._run(size)
        return done

    def _run(self, size: tuple[int, int]) -> list[tuple[FrameKey, Any]]:
        queue = self._queues[size]
        taken, self._queues[size] = queue[: self.batch_frames], queue[self.batch_frames :]
        if not self._queues[size]:
            del self._queues[size]
        pixels = torch.stack([p for _, p in taken])
        if len(taken) < self.batch_frames:
            pad = torch.zeros((self.batch_frames - len(taken), *pixels.shape[1:]), dtype=pixels.dtype)
            pixels = torch.cat([pixels, pad])
        frames = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        logits = run_teacher(self.teacher, frames, self.output_size, batch_size=self.batch_frames, device=self.device)
        self.forwards += 1
        values = self.encode(logits[: len(taken)])
        return [(key, value) for (key, _), value in zip(taken, values)]


# --- building a cache ------------------------------------------------------------------------------
class _Collectives:
    """What :func:`cache_teacher` needs from ``torch.distributed`` (nothing when alone)."""

    def __init__(self, rank: int, world_size: int, use_group: bool) -> None:
        self.rank, self.world_size, self.use_group = rank, world_size, use_group

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, rank order (only this rank's when there is no process group)."""
        if not self.use_group:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _collectives(rank: int | None, world_size: int | None) -> _Collectives:
    import torch.distributed as dist

    grouped = dist.is_available() and dist.is_initialized()
    if rank is None and world_size is None and grouped:
        return _Collectives(dist.get_rank(), dist.get_world_size(), True)
    rank, world_size = int(rank or 0), int(world_size or 1)
    if grouped and (rank, world_size) == (dist.get_rank(), dist.get_world_size()):
        return _Collectives(rank, world_size, True)
    return _Collectives(rank, world_size, False)


def _open_writer(out_dir: str | Path, teacher: hcframe.Teacher, identity: dict[str, Any], kind: str, k: int | None, size: tuple[int, int], team: _Collectives) -> PartMapWriter:
    """Check a cache already at ``out_dir`` against ``identity``, have rank 0 create ``meta.json``,
    then open it on the other ranks and make sure they all see rank 0's file (one shared folder)."""
    def make() -> PartMapWriter:
        return PartMapWriter(out_dir, kind=kind, label_names=teacher.label_names, identity=identity, k=k, resolution=size)

    def refusal() -> str | None:
        if (Path(out_dir) / "meta.json").is_file():
            differ = identity_differences(PartMapStore(out_dir).identity, json.loads(_canonical(identity)))
            if differ:
                return (
                    f"cannot resume teacher cache {out_dir}: it was built with other settings or another teacher "
                    f"(cache -> now: {'; '.join(differ[:4])}); use a new folder or delete this one"
                )
        return None

    def attempt(action: Callable[[], Any]) -> tuple[Any, str | None]:
        try:
            return action(), None
        except (PartMapError, OSError) as exc:
            return None, str(exc)

    refused, error = attempt(refusal)
    error = error or refused
    writer: PartMapWriter | None = None
    if team.rank == 0 and error is None:
        writer, error = attempt(make)
    created = (Path(out_dir) / "meta.json").read_text() if team.rank == 0 and error is None else None
    shared = team.gather((error, created))
    first = next((e for e, _ in shared if e), None)
    if first:
        raise PartMapError(first)
    if team.rank != 0:
        writer, error = attempt(make)
        if error is None and team.use_group and (Path(out_dir) / "meta.json").read_text() != shared[0][1]:
            error = (
                f"rank {team.rank} sees another {Path(out_dir) / 'meta.json'} than rank 0: "
                "the cache folder must be one folder that every node shares"
            )
    first = next((e for e, _ in team.gather((error, None)) if e), None)
    if first:
        raise PartMapError(first)
    assert writer is not None
    return writer


class _VideoOutputs:
    """One video's stored values while its frames are in flight."""

    __slots__ = ("maps", "pending", "decoded", "error")

    def __init__(self) -> None:
        self.maps: dict[int, Any] = {}
        self.pending = 0
        self.decoded = False
        self.error: str | None = None


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
    workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> CacheReport:
    """Run ``teacher`` over the frames :func:`cached_frame_indices` names (``0, every_k, ...`` and
    the last) of every video of ``dataset`` and store its outputs at ``resolution`` (``[h, w]``,
    covering the whole frame) in ``out_dir``.

    Videos are decoded with :func:`hcframe_video.decode.decode_frames` (the frame numbering the
    datasets use), ``chunk_frames`` at a time, in ``workers`` background processes (0: here).
    Frames of all videos go through one :class:`FrameBatcher`: the teacher runs on batches of
    exactly ``batch_size`` frames on ``device``, filled across videos. A video is written (one
    file, atomically) as soon as all its frames are back.

    Ranks: when ``torch.distributed`` is initialised (``torchrun``), or ``rank``/``world_size``
    are given, this process caches only its share of the videos (:func:`shard_indices`); rank 0
    creates ``meta.json`` first, and at the end writes ``manifest.json`` (videos cached, failures)
    after gathering every rank's report, which all ranks return. Without a process group, ranks
    given explicitly (independent jobs, e.g. an array job) do not wait for each other and each
    reports only its own share.

    Resuming: a video whose file is intact (:meth:`~hcframe_video.partmaps.PartMapWriter.check_video`)
    and holds the cached frame pattern is skipped; a damaged or incomplete one is computed again,
    with a ``log`` line naming it. A video that cannot be decoded is
    reported in ``failed`` and left out (rerun after fixing it). ``kind``/``k``: see the module
    docstring (``k`` only for ``"topk"``; it is clipped to the number of classes). A teacher that
    is not run on frames (``teacher.online`` false: its targets are stored maps) is refused.
    """
    started = time.perf_counter()
    if not teacher.online:
        raise ValueError(f"teacher {type(teacher).__name__} is not run on frames (its targets are stored maps): there is nothing to cache")
    if every_k < 1:
        raise ValueError(f"every_k must be >= 1, got {every_k}")
    if len(resolution) != 2 or min(resolution) < 1:
        raise ValueError(f"resolution must be [height, width] >= 1, got {list(resolution)}")
    if kind not in CODECS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(CODECS)}")
    if batch_size < 1 or chunk_frames < 1 or workers < 0:
        raise ValueError(f"batch_size and chunk_frames must be >= 1 and workers >= 0, got {batch_size}, {chunk_frames}, {workers}")
    k = CODECS[kind].fit_k(k, teacher.num_classes)
    team = _collectives(rank, world_size)
    dev = torch.device(device)
    teacher = teacher.freeze().to(dev)
    size = (int(resolution[0]), int(resolution[1]))
    identity = cache_identity(teacher, size, kind, k, every_k)
    writer = _open_writer(out_dir, teacher, identity, kind, k, size, team)

    mine = shard_indices(len(dataset), team.rank, team.world_size)
    todo: list[int] = []
    skipped: list[str] = []
    for i in mine:
        video_id = dataset.video_id(i)
        problem = writer.check_video(video_id)  # reads the file back: only intact ones count
        stored = writer.stored_frames(video_id) if problem is None else None
        if stored is not None and _holds_cached_frames(stored, every_k):
            skipped.append(video_id)
            continue
        if problem not in (None, "missing"):
            log(f"teacher cache: {writer.path_of(video_id)}: {problem}; making it again")
        todo.append(i)

    written: list[str] = []
    failed: list[tuple[str, str]] = []
    total_frames = 0
    batcher = FrameBatcher(teacher, batch_size, size, dev, writer.codec.from_logits)
    open_videos: dict[str, _VideoOutputs] = {}
    bar = _progress(progress and team.rank == 0, len(mine))

    def settle() -> None:
        """Write (or report) every video whose frames are all back."""
        nonlocal total_frames
        for video_id in [v for v, out in open_videos.items() if out.decoded and out.pending == 0]:
            out = open_videos.pop(video_id)
            if out.error is not None:
                failed.append((video_id, out.error))
            else:
                writer.write_video(video_id, out.maps)
                written.append(video_id)
                total_frames += len(out.maps)
                if on_video is not None:
                    on_video(video_id)
            bar.advance()

    def deliver(results: list[tuple[FrameKey, Any]]) -> None:
        for (video_id, frame), value in results:
            out = open_videos[video_id]
            out.pending -= 1
            if out.error is None:
                out.maps[frame] = value

    with bar:
        bar.advance(len(skipped))
        for chunk in frame_chunks(dataset, todo, every_k, chunk_frames, workers):
            out = open_videos.setdefault(chunk.video_id, _VideoOutputs())
            if chunk.error is not None:
                out.error = chunk.error
                out.maps.clear()
            else:
                out.pending += len(chunk.frames)
                deliver(batcher.add(chunk.video_id, chunk.frames, chunk.pixels))
            out.decoded = out.decoded or chunk.last
            settle()
        deliver(batcher.flush())
        settle()
    assert not open_videos, f"videos left unfinished: {sorted(open_videos)}"

    parts = team.gather((written, skipped, failed, total_frames))
    if team.use_group:
        written, skipped = [v for p in parts for v in p[0]], [v for p in parts for v in p[1]]
        failed, total_frames = [f for p in parts for f in p[2]], sum(p[3] for p in parts)
    order = {dataset.video_id(i): i for i in range(len(dataset))}  # report in dataset order
    written, skipped = sorted(written, key=order.__getitem__), sorted(skipped, key=order.__getitem__)
    failed = sorted(failed, key=lambda f: order[f[0]])
    seconds = time.perf_counter() - started
    if team.rank == 0:
        _write_manifest(Path(out_dir), dataset, writer, failed, team.world_size if team.use_group else 1)
    return CacheReport(
        root=str(out_dir), written=written, skipped=skipped, failed=failed, frames=total_frames,
        seconds=seconds, world_size=team.world_size,
    )  # fmt: skip


def _write_manifest(root: Path, dataset: hcframe.VideoDataset, writer: PartMapWriter, failed: list[tuple[str, str]], world_size: int) -> None:
    """``manifest.json``: how complete the cache is for ``dataset`` after this build."""
    ids = [dataset.video_id(i) for i in range(len(dataset))]
    cached = sum(1 for v in ids if writer.has_video(v))
    manifest = {
        "dataset_videos": len(ids),
        "cached_videos": cached,
        "complete": cached == len(ids),
        "failed": [{"video": v, "reason": r} for v, r in failed],
        "world_size": world_size,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=root)
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, root / "manifest.json")


def _progress(enabled: bool, total: int) -> Any:
    from hcframe.progress import ProgressBar

    return ProgressBar("cache-teacher", total, enabled=enabled, unit="videos")
