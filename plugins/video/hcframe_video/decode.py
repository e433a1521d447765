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

import threading
from fractions import Fraction
from typing import Iterable, Sequence

import attrs
import av
import numpy as np

__all__ = [
    "DecodeError",
    "FrameCountCache",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "decode_frames",
    "decode_span_without_conversion",
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
    ctx.thread_type = "NONE"  # see module docstring: threads per worker are already spent
    ctx.thread_count = 1
    return stream


def probe_video(path: str) -> VideoInfo:
    """Read a video's frame count, rate and size. Counts frames by demuxing (no decoding) when the
    container does not state them (e.g. Matroska/WebM). Raises :class:`DecodeError`."""
    with open_video(path) as container:
        stream = video_stream(container)
        try:
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise DecodeError("the video stream has no frame rate")
            time_base = stream.time_base
            if time_base is None:
                raise DecodeError("the video stream has no time base")
            first_pts = stream.start_time if stream.start_time is not None else 0
            num_frames = int(stream.frames or 0)
            counted = False
            if num_frames <= 0:
                counted = True
                num_frames = 0
                lowest = None
                for packet in container.demux(stream):
                    if packet.size == 0:  # the flush packet at the end
                        continue
                    num_frames += 1
                    if packet.pts is not None and (lowest is None or packet.pts < lowest):
                        lowest = packet.pts
                if lowest is not None and stream.start_time is None:
                    first_pts = lowest
            width, height = stream.codec_context.width, stream.codec_context.height
        except av.FFmpegError as exc:
            raise DecodeError(f"cannot read the stream: {one_line_error(exc)}") from exc
    if num_frames <= 0:
        raise DecodeError("the video stream has no frames")
    if width <= 0 or height <= 0:
        raise DecodeError(f"the video stream has an invalid size {width}x{height}")
    return VideoInfo(
        num_frames=num_frames,
        average_rate=Fraction(rate),
        time_base=Fraction(time_base),
        first_pts=int(first_pts),
        width=width,
        height=height,
        frames_counted=counted,
    )


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` after scaling the shorter side to ``short_side`` (aspect kept, rounded)."""
    if width <= height:
        return short_side, max(1, int(round(height * short_side / width)))
    return max(1, int(round(width * short_side / height))), short_side


#: Frames a container may lose at its end before a short read counts as truncation. AVI headers
#: often state one or two frames more than the stream holds.
END_TOLERANCE = 2


def _iterate_from(container, stream, info: VideoInfo, first: int) -> Iterable[tuple[int, av.VideoFrame]]:
    """Yield ``(frame number, frame)`` starting at the keyframe at or before frame ``first``."""
    if first > 0:
        container.seek(_pts_of_frame(first, info), stream=stream, backward=True, any_frame=False)
    landed = None
    counter = 0
    for frame in container.decode(stream):
        index = _frame_of_pts(frame.pts, info) if frame.pts is not None else counter
        counter = index + 1
        if landed is None:
            landed = index
            if index > first:
                # The demuxer landed after the wanted frame (imprecise index): restart from the top.
                container.seek(info.first_pts, stream=stream, backward=True, any_frame=False)
                yield from _iterate_from_start(container, stream, info)
                return
        yield index, frame


def _iterate_from_start(container, stream, info: VideoInfo) -> Iterable[tuple[int, av.VideoFrame]]:
    counter = 0
    for frame in container.decode(stream):
        index = _frame_of_pts(frame.pts, info) if frame.pts is not None else counter
        counter = index + 1
        yield index, frame


def _check_wanted(wanted: Sequence[int], info: VideoInfo) -> list[int]:
    unique = sorted(set(int(i) for i in wanted))
    if not unique:
        raise ValueError("decode_frames: no frame indices given")
    if unique[0] < 0 or unique[-1] >= info.num_frames:
        raise ValueError(f"decode_frames: frame indices must lie in [0, {info.num_frames}), got {unique[0]}..{unique[-1]}")
    return unique


def decode_frames(
    path: str,
    indices: Sequence[int],
    size: tuple[int, int] | None = None,
    info: VideoInfo | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Decode the frames ``indices`` (any order, repeats allowed) of the video at ``path``.

    Returns ``(frames, unique)``: ``frames`` uint8 ``[len(unique), H, W, 3]`` RGB for the sorted
    unique indices ``unique``, resized to ``size = (width, height)`` (``None``: native size). Use
    ``np.searchsorted(unique, indices)`` to pick views out of it.

    If the stream ends less than :data:`END_TOLERANCE` frames before the stated frame count, the
    missing tail frames repeat the last decoded frame (a container that over-states its count);
    an earlier end raises :class:`DecodeError` (a truncated file), as does any decoder error.
    """
    info = info or probe_video(path)
    unique = _check_wanted(indices, info)
    wanted = set(unique)
    width, height = size if size is not None else (info.width, info.height)
    frames = np.empty((len(unique), height, width, 3), dtype=np.uint8)
    slot = {index: k for k, index in enumerate(unique)}
    filled = 0
    last_decoded = -1
    with open_video(path) as container:
        stream = video_stream(container)
        try:
            for index, frame in _iterate_from(container, stream, info, unique[0]):
                last_decoded = max(last_decoded, index)
                if index in wanted:
                    rgb = frame.reformat(width=width, height=height, format="rgb24", threads=1)
                    frames[slot[index]] = rgb.to_ndarray()
                    wanted.discard(index)
                    filled += 1
                if index >= unique[-1] or not wanted:
                    break
        except av.FFmpegError as exc:
            raise DecodeError(f"decoding failed near frame {last_decoded + 1}: {one_line_error(exc)}") from exc
    if wanted:
        missing = sorted(wanted)
        if filled and last_decoded >= info.num_frames - 1 - END_TOLERANCE and missing[0] > last_decoded:
            source = slot[max(i for i in unique if i not in wanted)]
            for index in missing:
                frames[slot[index]] = frames[source]
        else:
            raise DecodeError(
                f"truncated: the stream ended after frame {last_decoded} but frame {missing[0]} was needed "
                f"(the container states {info.num_frames} frames)"
            )
    return frames, unique


def decode_span_without_conversion(path: str, first: int, last: int, info: VideoInfo) -> int:
    """Decode frames ``first..last`` as a clip read would (seek to the keyframe before ``first``,
    stop at ``last``) without colour conversion; returns the number of frames decoded. This is the
    decode limit the benchmark compares the full pipeline with."""
    decoded = 0
    with open_video(path) as container:
        stream = video_stream(container)
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
