"""PyAV decoding of exactly the frames a clip needs.

Frame numbers
    A frame's number is ``round((pts - first_pts) * time_base * average_rate)``: its presentation
    time expressed in frames of the stream's average rate, counted from the stream's start. This
    matches the order of frames on screen for every container we read (AVI, MP4, MKV) and does
    not depend on where decoding started, so a clip decoded after a seek and the same frames
    decoded from the start of the file get the same numbers.

What one read costs
    :func:`decode_frames` seeks to the keyframe at or before the first wanted frame, decodes up to
    the last wanted frame and stops; only the wanted frames are converted to RGB and resized, in
    one ``reformat`` call each (libswscale does both at once). Several clips of one video (the
    views of a contrastive sample, the 10 test clips) are read by passing the union of their frame
    numbers: the shared span is decoded once.

Threads
    One decoder thread and one swscale thread per call (``threads=1``). PyAV's defaults (frame
    threading in the decoder, automatic thread count in swscale) cost more than they gain on
    small frames and when every DataLoader worker already owns a core; the benchmark in
    ``benchmarks/data_pipeline.py`` measures this.
"""

from __future__ import annotations

import bisect
import threading
from fractions import Fraction
from typing import Iterable, Sequence

import attrs
import av
import numpy as np
from av.video.reformatter import VideoReformatter

__all__ = [
    "DecodeError",
    "FrameCountCache",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "BoxCutter",
    "crop_frame",
    "decode_boxes",
    "decode_frames",
    "decode_spans_without_conversion",
    "plan_segments",
    "one_line_error",
    "open_video",
    "video_stream",
    "probe_video",
    "resized_size",
]


#: Video file extensions, in the order tried when a listed file is absent (prepared copies are .mp4).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


class DecodeError(RuntimeError):
    """A video that cannot be decoded (the message carries the decoder's error text)."""


@attrs.frozen
class VideoInfo:
    """What sampling needs to know about a video's first video stream."""

    num_frames: int
    average_rate: Fraction  # frames per second
    time_base: Fraction  # seconds per pts unit
    first_pts: int  # pts of frame 0
    width: int
    height: int
    frames_counted: bool  # True when the container did not state a frame count and we demuxed to count
    demuxed_frames: int = 0  # packets found by demuxing (less than num_frames: a truncated file)
    keyframes: tuple[int, ...] = ()  # frame numbers of the keyframes, sorted (empty: unknown)


def _frame_of_pts(pts: int, info: VideoInfo) -> int:
    return int(round(float((pts - info.first_pts) * info.time_base * info.average_rate)))


def _pts_of_frame(index: int, info: VideoInfo) -> int:
    return info.first_pts + int(Fraction(index) / (info.average_rate * info.time_base))


def open_video(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"cannot open: {one_line_error(exc)}") from exc


def one_line_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())  # one line


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise DecodeError("no video stream in the file")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if DECODER_THREADS != 0:  # 0: leave PyAV/FFmpeg's defaults (for measuring them)
        ctx.thread_type = "NONE" if DECODER_THREADS == 1 else "AUTO"  # see the module docstring
        ctx.thread_count = DECODER_THREADS
    return stream


def probe_video(path: str) -> VideoInfo:
    """Read a video's frame count, rate, size and keyframe positions. Demuxes the stream once
    (reading packets, no decoding) to find the keyframes, and to count the frames when the
    container does not state their number (e.g. Matroska/WebM). Raises :class:`DecodeError`."""
    with open_video(path) as container:
        stream = video_stream(container)
        try:
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise DecodeError("the video stream has no frame rate")
            time_base = stream.time_base
            if time_base is None:
                raise DecodeError("the video stream has no time base")
            stated = int(stream.frames or 0)
            width, height = stream.codec_context.width, stream.codec_context.height
            demuxed = 0
            stamps, key_stamps = [], []
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                demuxed += 1
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is not None:
                    stamps.append(stamp)
                    if packet.is_keyframe:
                        key_stamps.append(stamp)
        except av.FFmpegError as exc:
            raise DecodeError(f"cannot read the stream: {one_line_error(exc)}") from exc
    if stream.start_time is not None:
        first_pts = int(stream.start_time)
    else:
        first_pts = min(stamps) if stamps else 0
    num_frames = stated if stated > 0 else demuxed
    if num_frames <= 0:
        raise DecodeError("the video stream has no frames")
    if width <= 0 or height <= 0:
        raise DecodeError(f"the video stream has an invalid size {width}x{height}")
    info = VideoInfo(
        num_frames=num_frames,
        average_rate=Fraction(rate),
        time_base=Fraction(time_base),
        first_pts=first_pts,
        width=width,
        height=height,
        frames_counted=stated <= 0,
        demuxed_frames=demuxed,
        keyframes=(),
    )
    keyframes = tuple(sorted({_frame_of_pts(p, info) for p in key_stamps}))
    return attrs.evolve(info, keyframes=keyframes)


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` after scaling the shorter side to ``short_side`` (aspect kept, rounded)."""
    if width <= height:
        return short_side, max(1, int(round(height * short_side / width)))
    return max(1, int(round(width * short_side / height))), short_side


#: Threads of the decoder and of libswscale per call (0: the libraries' automatic choice). Kept
#: at 1 on purpose; module-level so the benchmark can measure the alternatives.
DECODER_THREADS = 1
SCALER_THREADS = 1

#: Frames a container may lose at its end before a short read counts as truncation. AVI headers
#: often state one or two frames more than the stream holds.
END_TOLERANCE = 2


def _iterate_from(container, stream, info: VideoInfo, first: int) -> Iterable[tuple[int, av.VideoFrame]]:
    """Yield ``(frame number, frame)`` starting at the keyframe at or before frame ``first``."""
    if first > 0:
        container.seek(_pts_of_frame(first, info), stream=stream, backward=True, any_frame=False)
    frames_per_pts = float(info.time_base * info.average_rate)  # float: Fractions cost ~5 us a frame
    first_pts = info.first_pts
    landed = False
    counter = 0
    for frame in container.decode(stream):
        pts = frame.pts
        index = int(round((pts - first_pts) * frames_per_pts)) if pts is not None else counter
        counter = index + 1
        if not landed:
            landed = True
            if index > first:
                # The demuxer landed after the wanted frame (imprecise index): restart from the top.
                container.seek(first_pts, stream=stream, backward=True, any_frame=False)
                yield from _iterate_from_start(container, stream, info)
                return
        yield index, frame


def _iterate_from_start(container, stream, info: VideoInfo) -> Iterable[tuple[int, av.VideoFrame]]:
    frames_per_pts = float(info.time_base * info.average_rate)
    counter = 0
    for frame in container.decode(stream):
        pts = frame.pts
        index = int(round((pts - info.first_pts) * frames_per_pts)) if pts is not None else counter
        counter = index + 1
        yield index, frame


def _check_wanted(wanted: Sequence[int], info: VideoInfo) -> list[int]:
    unique = sorted(set(int(i) for i in wanted))
    if not unique:
        raise ValueError("decode_frames: no frame indices given")
    if unique[0] < 0 or unique[-1] >= info.num_frames:
        raise ValueError(f"decode_frames: frame indices must lie in [0, {info.num_frames}), got {unique[0]}..{unique[-1]}")
    return unique


def _wanted_frames(container, stream, info: VideoInfo, unique: list[int]) -> Iterable[tuple[list[int], av.VideoFrame]]:
    """Decode the sorted frame numbers ``unique`` (seeking between segments, see
    :func:`plan_segments`); yield ``(numbers, frame)``: the decoded frame shown for those wanted
    numbers (usually one; frame numbers a variable-rate stream skips take the next frame shown).

    If the stream ends less than :data:`END_TOLERANCE` frames before the stated frame count, the
    remaining numbers get the last decoded frame (a container that over-states its count); an
    earlier end raises :class:`DecodeError` (a truncated file), as does any decoder error.
    """
    last_decoded, last_frame, served = -1, None, 0
    try:
        for segment in plan_segments(unique, info.keyframes):
            pos = 0
            for index, frame in _iterate_from(container, stream, info, segment[0]):
                last_decoded, last_frame = index, frame
                if segment[pos] <= index:
                    numbers = []
                    while pos < len(segment) and segment[pos] <= index:
                        numbers.append(segment[pos])
                        pos += 1
                    served += len(numbers)
                    yield numbers, frame
                if pos == len(segment):
                    break
            if pos < len(segment):
                break  # the stream ended early
    except av.FFmpegError as exc:
        raise DecodeError(f"decoding failed near frame {last_decoded + 1}: {one_line_error(exc)}") from exc
    if served < len(unique):
        if last_frame is not None and last_decoded >= info.num_frames - 1 - END_TOLERANCE:
            yield unique[served:], last_frame
        else:
            raise DecodeError(
                f"truncated: the stream ended after frame {last_decoded} but frame {unique[served]} was needed "
                f"(the container states {info.num_frames} frames)"
            )


#: Scaling filter. libswscale's "fast_bilinear" is a plain 2-tap bilinear (like OpenCV's
#: INTER_LINEAR that most video pipelines resize with); "bilinear" widens its support when
#: shrinking (less aliasing) but costs ~50% more per converted frame, which is as much as
#: decoding a frame of MPEG-4 Part 2 at 320x240.
INTERPOLATION = "FAST_BILINEAR"

#: Pixel formats whose planes :func:`crop_frame` can cut (4:2:0: chroma at half resolution).
CROPPABLE = ("yuv420p", "yuvj420p")


class BoxCutter:
    """Cuts ``(x, y, width, height)`` boxes out of 4:2:0 frames into reused frames (one per box
    size), so a clip's frames are cut without allocating. ``x``, ``y``, ``width`` and ``height``
    must be even so the chroma planes are cut at the same place. A returned frame is overwritten
    by the next cut of the same size: convert it before cutting again."""

    def __init__(self) -> None:
        self._targets: dict[tuple[int, int, str], tuple[av.VideoFrame, list[np.ndarray]]] = {}

    def cut(self, frame: av.VideoFrame, box: tuple[int, int, int, int]) -> av.VideoFrame:
        x, y, w, h = box
        key = (w, h, frame.format.name)
        target = self._targets.get(key)
        if target is None:
            out = av.VideoFrame(w, h, frame.format.name)
            planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in out.planes]
            target = self._targets[key] = (out, planes)
        out, dst = target
        for k, sub in enumerate((1, 2, 2)):
            plane = frame.planes[k]
            src = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
            dst[k][: h // sub, : w // sub] = src[y // sub : (y + h) // sub, x // sub : (x + w) // sub]
        return out


def crop_frame(frame: av.VideoFrame, box: tuple[int, int, int, int]) -> av.VideoFrame:
    """A new frame holding the ``(x, y, width, height)`` box (even numbers) of a 4:2:0 ``frame``."""
    return BoxCutter().cut(frame, box)


def decode_frames(
    path: str,
    indices: Sequence[int],
    size: tuple[int, int] | None = None,
    info: VideoInfo | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Decode the frames ``indices`` (any order, repeats allowed) of the video at ``path``.

    Returns ``(frames, unique)``: ``frames`` uint8 ``[len(unique), H, W, 3]`` RGB for the sorted
    unique indices ``unique``, resized to ``size = (width, height)`` (``None``: native size). Use
    ``np.searchsorted(unique, indices)`` to pick views out of it. Errors and short streams: see
    :func:`_wanted_frames`.
    """
    info = info or probe_video(path)
    unique = _check_wanted(indices, info)
    width, height = size if size is not None else (info.width, info.height)
    frames = np.empty((len(unique), height, width, 3), dtype=np.uint8)
    slot = {index: k for k, index in enumerate(unique)}
    reformatter = VideoReformatter()  # keeps its scaling context between frames
    with open_video(path) as container:
        stream = video_stream(container)
        for numbers, frame in _wanted_frames(container, stream, info, unique):
            rgb = reformatter.reformat(frame, width=width, height=height, format="rgb24", interpolation=INTERPOLATION, threads=SCALER_THREADS).to_ndarray()
            for index in numbers:
                frames[slot[index]] = rgb
    return frames, unique


def decode_boxes(
    path: str,
    views: Sequence[tuple[Sequence[int], tuple[int, int, int, int]]],
    size: tuple[int, int],
    info: VideoInfo | None = None,
) -> np.ndarray:
    """Decode crops: ``views`` is a list of ``(frame_indices, box)`` with ``box = (x, y, w, h)`` in
    source pixels (even numbers); returns uint8 ``[V, T, size[1], size[0], 3]`` RGB, each view's
    frames cut to its box and resized to ``size = (width, height)``. The union of all views' frames
    is decoded once. Cutting before converting means only the kept pixels are converted and
    scaled. Frames in a pixel format other than 4:2:0 are converted whole and then cut (same
    result up to rounding)."""
    info = info or probe_video(path)
    unique = _check_wanted([i for indices, _ in views for i in indices], info)
    width, height = size
    t_max = max(len(indices) for indices, _ in views)
    out = np.empty((len(views), t_max, height, width, 3), dtype=np.uint8)
    requests: dict[int, list[tuple[int, int]]] = {}
    for v, (indices, _) in enumerate(views):
        for t, index in enumerate(indices):
            requests.setdefault(int(index), []).append((v, t))
    reformatter, cutter = VideoReformatter(), BoxCutter()
    with open_video(path) as container:
        stream = video_stream(container)
        for numbers, frame in _wanted_frames(container, stream, info, unique):
            converted: dict[tuple[int, int, int, int], np.ndarray] = {}
            for index in numbers:
                for v, t in requests[index]:
                    box = tuple(views[v][1])
                    if box not in converted:
                        converted[box] = _convert_box(reformatter, cutter, frame, box, width, height)
                    out[v, t] = converted[box]
    return out


def _convert_box(
    reformatter: VideoReformatter, cutter: BoxCutter, frame: av.VideoFrame, box: tuple[int, int, int, int], width: int, height: int
) -> np.ndarray:
    x, y, w, h = box
    if frame.format.name in CROPPABLE and x % 2 == y % 2 == w % 2 == h % 2 == 0:
        part = cutter.cut(frame, box)
        return reformatter.reformat(part, width=width, height=height, format="rgb24", interpolation=INTERPOLATION, threads=SCALER_THREADS).to_ndarray()
    # Other layouts: convert at a size where the box becomes width x height, then cut.
    full_w = int(round(frame.width * width / w))
    full_h = int(round(frame.height * height / h))
    rgb = reformatter.reformat(frame, width=full_w, height=full_h, format="rgb24", interpolation=INTERPOLATION, threads=SCALER_THREADS).to_ndarray()
    x0, y0 = int(round(x * width / w)), int(round(y * height / h))
    x0, y0 = min(x0, full_w - width), min(y0, full_h - height)
    return rgb[y0 : y0 + height, x0 : x0 + width]


#: The fewest decoded frames a seek must save to be worth it (see :func:`plan_segments`).
SEEK_MIN_SKIP = 4


def plan_segments(unique: Sequence[int], keyframes: Sequence[int]) -> list[list[int]]:
    """Split sorted frame numbers into runs decoded without seeking: a new run starts where the
    keyframe before the next wanted frame lies far enough beyond the previous wanted frame that
    seeking there skips at least :data:`SEEK_MIN_SKIP` frames continuing would decode (a seek
    flushes the decoder, so skipping one or two frames is not worth it). Unknown keyframes: one run."""
    segments = [[unique[0]]]
    for previous, current in zip(unique, unique[1:]):
        k = bisect.bisect_right(keyframes, current) - 1
        if k >= 0 and keyframes[k] - previous - 1 >= SEEK_MIN_SKIP:
            segments.append([current])
        else:
            segments[-1].append(current)
    return segments


def decode_spans_without_conversion(path: str, spans: Sequence[tuple[int, int]], info: VideoInfo) -> int:
    """The benchmark's decode limit: open the file once and, for each ``(first, last)`` span,
    seek to the keyframe at or before ``first`` and decode up to ``last``, without colour
    conversion. Returns the number of frames decoded."""
    decoded = 0
    with open_video(path) as container:
        stream = video_stream(container)
        for first, last in spans:
            for index, _frame in _iterate_from(container, stream, info, first):
                decoded += 1
                if index >= last:
                    break
    return decoded


class FrameCountCache:
    """Per-process memory of :func:`probe_video` results, keyed by path (thread-safe)."""

    def __init__(self) -> None:
        self._infos: dict[str, VideoInfo] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> VideoInfo:
        info = self._infos.get(path)
        if info is None:
            info = probe_video(path)
            with self._lock:
                self._infos[path] = info
        return info

    def __len__(self) -> int:
        return len(self._infos)
