"""PyAV decoding of exactly the frames a clip needs.

Frame numbers
    Frame ``i`` of a video is the ``i``-th frame it presents: the ``i``-th picture a player shows,
    and the ``i``-th frame of decoding the whole file from its start and sorting the frames by
    presentation time (PyAV's ``container.decode`` already yields them in that order). Clip
    sampling, the test views and part-map caches all count frames this way.

    :func:`probe_video` makes this exact without decoding: it demuxes the stream once (reading
    packets only) and sorts the presentation timestamps (pts) of the packets from the first
    keyframe on; frame ``i`` is the frame with the ``i``-th smallest pts. Packets before the first
    keyframe (a stream cut mid-GOP) and packets marked *discard* (MP4 edit-list pre-roll) are not
    presented frames. This does not depend on

    - B-frames (packets arrive in decode order; MPEG-4 Part 2 AVIs with B-frames, as Xvid writes
      them, present their first frame at pts 1, not at the stream's start time 0),
    - a stream that starts at a non-zero time (MPEG-TS starts at 0.08 s or at any broadcast clock),
    - a variable frame rate (frame ``i`` is not ``i / fps`` seconds in),

    and ``num_frames`` is the number of presented frames the scan found, not the container's
    stated count or its duration. A container that states more frames than it holds (by more than
    :data:`END_TOLERANCE`) is a cut-off file and raises :class:`DecodeError` ("truncated").

    For constant-rate video the pts are ``first + round(i * step)`` with ``step`` one frame
    period in pts units; :func:`probe_video` checks that for every frame and then keeps only
    ``first`` and ``step``. Otherwise (variable rate, irregular timestamps) it keeps the sorted
    pts, 8 bytes a frame. Decoded frames are numbered by looking their pts up the same way, so a
    frame's number never depends on where decoding started.

Seeking
    To read frame ``i`` the decoder seeks to the keyframe at or before ``i`` (by that keyframe's
    pts) and decodes forward. The first decoded frame's number tells where the demuxer really
    landed: if it is past ``i`` (MPEG-TS seeks by decode time and can land after the keyframe,
    or past the end of the stream), it seeks again earlier by the stream's largest pts - dts lead
    (the B-frame delay), and as a last resort decodes from the start of the file. A frame decoded
    after a seek whose pts is no presented frame's (MPEG program streams guess timestamps after a
    seek) makes the reader give up seeking in that file and read on from the top, numbering by
    pts and, where a pts is missing or unknown there, by output order. Streams without any pts
    (raw elementary streams) are always read from the top and numbered by output order. A frame
    is never served from the wrong place; a badly seeking file only costs time.

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
import itertools
import threading
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Sequence

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
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".ts")


class DecodeError(RuntimeError):
    """A video that cannot be decoded (the message carries the decoder's error text)."""


@attrs.frozen
class VideoInfo:
    """What sampling needs to know about a video's first video stream (frame numbers: see the
    module docstring)."""

    num_frames: int  # presented frames
    average_rate: Fraction  # frames per second
    time_base: Fraction  # seconds per pts unit
    first_pts: int  # pts of frame 0 (the first presented frame)
    width: int
    height: int
    frames_counted: bool  # True when the container did not state a frame count
    demuxed_frames: int = 0  # packets found by demuxing (the container may state more: a truncated file)
    keyframes: tuple[int, ...] = ()  # frame numbers of the keyframes, sorted (empty: unknown)
    #: pts units per frame when frame i has pts ``first_pts + round(i * pts_step)`` (checked for
    #: every frame); ``None``: the pts are in ``pts_table``.
    pts_step: Fraction | None = None
    #: The sorted pts of all frames as int64 bytes, when no ``pts_step`` fits (variable rate).
    pts_table: bytes = b""
    #: The largest ``pts - dts`` of the stream's packets (the B-frame reordering delay), in pts
    #: units: how much earlier to seek when a demuxer seeks by decode time.
    seek_lead: int = 0
    #: Some packets carry no pts: frames are numbered in the order the decoder outputs them
    #: (presentation order), always reading from the top of the file (``keyframes`` is empty).
    numbered_by_output_order: bool = False

    def step(self) -> Fraction:
        """pts units per frame of the constant-rate model (the stated rate when none was checked)."""
        return self.pts_step if self.pts_step is not None else 1 / (self.average_rate * self.time_base)

    def pts_of_frame(self, index: int) -> int:
        """The pts of frame ``index``."""
        if self.pts_table:
            return int(np.frombuffer(self.pts_table, np.int64)[index])
        return self.first_pts + _round_half_up(index * self.step())

    def frame_numberer(self) -> Callable[[int], int | None]:
        """A function from a decoded frame's pts to its frame number: below 0 for a frame shown
        before frame 0 (a leading frame of an open GOP), ``>= num_frames`` after the last frame,
        and ``None`` for a pts between frames that no presented frame has (timestamps that a
        demuxer guessed after a seek, as MPEG program streams do: not to be trusted)."""
        if self.pts_table:
            table = np.frombuffer(self.pts_table, np.int64).tolist()
            last = len(table) - 1

            def from_table(pts: int) -> int | None:
                k = bisect.bisect_left(table, pts)
                if k > last:
                    return last + 1
                if table[k] == pts:
                    return k
                return -1 if k == 0 else None

            return from_table
        step = self.step()
        first, p, q = self.first_pts, step.numerator, step.denominator
        frames_per_pts = float(1 / step)  # float: Fractions cost ~5 us a frame

        def from_step(pts: int) -> int | None:
            k = int(round((pts - first) * frames_per_pts))
            return k if first + (2 * k * p + q) // (2 * q) == pts else None

        return from_step


def _round_half_up(value: Fraction) -> int:
    return (2 * value.numerator + value.denominator) // (2 * value.denominator)


def _fit_pts_step(stamps: np.ndarray, rates: Sequence[Fraction], time_base: Fraction) -> Fraction | None:
    """The first of ``rates`` whose frame period (in pts units) gives exactly the sorted pts
    ``stamps`` as ``stamps[0] + round(i * step)`` and back (see :meth:`VideoInfo.frame_numberer`)."""
    n = len(stamps)
    k = np.arange(n, dtype=np.int64)
    for rate in rates:
        step = 1 / (Fraction(rate) * time_base)
        p, q = step.numerator, step.denominator
        if step < 1 or 2 * n * p + q >= 2**62:  # below one pts unit a frame, or int64 overflow
            continue
        model = stamps[0] + (2 * k * p + q) // (2 * q)
        if not np.array_equal(model, stamps):
            continue
        back = np.rint((stamps - stamps[0]) * float(1 / step))
        if np.array_equal(back, k):
            return step
    return None


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


@attrs.frozen
class _PacketScan:
    """What one demux pass over a video stream found (see :func:`_scan_packets`)."""

    demuxed: int  # packets in the stream, empty ones included (a container's stated count counts them)
    stamps: list[int | None]  # pts of the packets that are pictures, decode order (dts where a pts is missing)
    is_key: list[bool]  # keyframe flag of each of those packets
    without_pts: int  # how many of them had no pts
    lead: int  # the largest pts - dts


def _scan_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _PacketScan:
    demuxed, lead, without_pts = 0, 0, 0
    stamps: list[int | None] = []
    is_key: list[bool] = []
    for packet in container.demux(stream):
        pts, dts = packet.pts, packet.dts
        if pts is None and dts is None and packet.size == 0:  # the flush packet at the end
            continue
        demuxed += 1
        if pts is not None and dts is not None and pts - dts > lead:
            lead = pts - dts
        # Empty packets (AVI dropped-frame placeholders) and pre-roll packets are not shown.
        if packet.size == 0 or packet.is_discard:
            continue
        stamps.append(pts if pts is not None else dts)  # None: an elementary stream without timestamps
        is_key.append(packet.is_keyframe)
        without_pts += pts is None
    return _PacketScan(demuxed, stamps, is_key, without_pts, lead)


def _presented(scan: _PacketScan) -> tuple[list[int], list[int]]:
    """The stamps of the presented frames (decode order) and those of the keyframes among them.

    Frames before the first keyframe in decode order, or shown before it, cannot be decoded from
    the start of the file: a player starts at the first keyframe. Without keyframe flags every
    frame counts, and without pts the keyframes are not used (reading starts at the top)."""
    if True not in scan.is_key:
        return scan.stamps, []
    start = scan.is_key.index(True)
    if scan.without_pts:
        return scan.stamps[start:], []
    first = scan.stamps[start]
    kept = [(s, k) for s, k in zip(scan.stamps[start:], scan.is_key[start:]) if s >= first]
    return [s for s, _ in kept], [s for s, k in kept if k]


def probe_video(path: str) -> VideoInfo:
    """Read a video's frame count, rate, size, keyframe positions and frame timestamps. Demuxes
    the stream once (reading packets, no decoding); frame numbers and the count are the
    presented frames (see the module docstring). Raises :class:`DecodeError`."""
    with open_video(path) as container:
        stream = video_stream(container)
        try:
            rates = [Fraction(r) for r in (stream.average_rate, stream.guessed_rate, stream.base_rate) if r]
            if not rates:
                raise DecodeError("the video stream has no frame rate")
            if stream.time_base is None:
                raise DecodeError("the video stream has no time base")
            time_base = Fraction(stream.time_base)
            stated = int(stream.frames or 0)
            width, height = stream.codec_context.width, stream.codec_context.height
            scan = _scan_packets(container, stream)
        except av.FFmpegError as exc:
            raise DecodeError(f"cannot read the stream: {one_line_error(exc)}") from exc
    if width <= 0 or height <= 0:
        raise DecodeError(f"the video stream has an invalid size {width}x{height}")
    if stated > scan.demuxed + END_TOLERANCE:
        raise DecodeError(f"truncated: the container states {stated} frames but holds {scan.demuxed} (is the file cut short?)")
    stamps, key_stamps = _presented(scan)
    if not stamps:
        raise DecodeError("the video stream has no frames")
    common = dict(
        average_rate=rates[0], time_base=time_base, width=width, height=height, frames_counted=stated <= 0,
        demuxed_frames=scan.demuxed, seek_lead=scan.lead,
    )  # fmt: skip
    if scan.without_pts:
        return VideoInfo(num_frames=len(stamps), first_pts=0, numbered_by_output_order=True, **common)
    frame_pts = np.unique(np.asarray(stamps, dtype=np.int64))  # sorted: presentation order
    step = _fit_pts_step(frame_pts, rates, time_base)
    keyframes = np.unique(np.searchsorted(frame_pts, np.asarray(key_stamps, dtype=np.int64)))
    return VideoInfo(
        num_frames=len(frame_pts),
        first_pts=int(frame_pts[0]),
        keyframes=tuple(int(k) for k in keyframes),
        pts_step=step,
        pts_table=b"" if step is not None else frame_pts.tobytes(),
        **common,
    )


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


class _UntrustedTimestamps(Exception):
    """A frame decoded after a seek carries a pts that no presented frame has."""


class _FrameReader:
    """One open file, read in presentation order with numbered frames (see the module docstring,
    "Seeking"). ``frames_from(first)`` yields ``(frame number, frame)`` from a point at or before
    frame ``first``; the container is reused across calls."""

    def __init__(self, path: str, info: VideoInfo) -> None:
        self.path, self.info = path, info
        self.number_of = info.frame_numberer()
        self.container = open_video(path)
        self.stream = video_stream(self.container)
        self.at_top = True  # nothing demuxed yet
        self.seekable = bool(info.keyframes) and not info.numbered_by_output_order
        self.seek_early = False  # this file's demuxer landed late once: seek by decode time at once
        self.reading = None  # the decoding from the top in progress, when not seeking
        self.position = -1  # the number of the last frame it yielded

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "_FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decode(self, from_top: bool) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decoded frames with their numbers. From the top of the file a frame whose pts cannot
        be looked up is numbered by its position in the output (the definition itself); after a
        seek it raises :class:`_UntrustedTimestamps`."""
        self.at_top = False
        number_of, by_order, count = self.number_of, self.info.numbered_by_output_order, 0
        for frame in self.container.decode(self.stream):
            pts = frame.pts
            index = number_of(pts) if pts is not None and not by_order else None
            if index is None:
                if not from_top:
                    raise _UntrustedTimestamps
                index = count
            count += 1
            if from_top:
                self.position = index
            yield index, frame

    def _from_top(self) -> Iterator[tuple[int, av.VideoFrame]]:
        if not self.at_top:  # a fresh container: no seek to trust
            self.container.close()
            self.container = open_video(self.path)
            self.stream = video_stream(self.container)
        self.position = -1
        return self._decode(from_top=True)

    def _seek(self, first: int, keyframe: int) -> Iterator[tuple[int, av.VideoFrame]] | None:
        """Frames from a seek to ``keyframe`` that landed at or before frame ``first``; ``None``
        when no seek does."""
        key_pts = self.info.pts_of_frame(keyframe)
        lead = self.info.seek_lead
        targets = [key_pts, key_pts - lead] if lead > 0 else [key_pts]
        if self.seek_early:
            targets = targets[1:]
        for attempt, target in enumerate(targets):
            try:
                self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            except av.FFmpegError:
                return None
            frames = self._decode(from_top=False)
            landed = next(frames, None)
            if landed is not None and landed[0] <= first:
                return itertools.chain([landed], frames)
            if attempt == 0 and len(targets) > 1:
                self.seek_early = True
        return None

    def frames_from(self, first: int) -> Iterator[tuple[int, av.VideoFrame]]:
        keyframes = self.info.keyframes
        keyframe = keyframes[max(0, bisect.bisect_right(keyframes, first) - 1)] if keyframes else 0
        if self.seekable and not (self.at_top and keyframe == 0):
            self.reading = None  # a seek moves the container
            try:
                frames = self._seek(first, keyframe)
                if frames is not None:
                    for item in frames:  # a for loop, not "yield from": closing this must not close frames
                        yield item
                    return
            except _UntrustedTimestamps:
                self.seekable = False  # this demuxer's timestamps after a seek are guesses: read on from the top
        # Without a usable seek: continue the read from the top if it has not passed frame first.
        if self.reading is None or self.position >= first:
            self.reading = self._from_top()
        for item in self.reading:
            yield item


def _check_wanted(wanted: Sequence[int], info: VideoInfo) -> list[int]:
    unique = sorted(set(int(i) for i in wanted))
    if not unique:
        raise ValueError("decode_frames: no frame indices given")
    if unique[0] < 0 or unique[-1] >= info.num_frames:
        raise ValueError(f"decode_frames: frame indices must lie in [0, {info.num_frames}), got {unique[0]}..{unique[-1]}")
    return unique


def _wanted_frames(reader: _FrameReader, unique: list[int]) -> Iterable[tuple[list[int], av.VideoFrame]]:
    """Decode the sorted frame numbers ``unique`` (seeking between segments, see
    :func:`plan_segments`); yield ``(numbers, frame)``: the decoded frame shown for those wanted
    numbers (usually one; a number whose frame the decoder does not output takes the next frame
    shown).

    If the stream ends less than :data:`END_TOLERANCE` frames before ``num_frames``, the
    remaining numbers get the last decoded frame (a decoder that drops the last frames); an
    earlier end raises :class:`DecodeError` (a truncated file), as does any decoder error.
    """
    info = reader.info
    last_decoded, last_frame, served = -1, None, 0
    try:
        for segment in plan_segments(unique, info.keyframes):
            pos = 0
            for index, frame in reader.frames_from(segment[0]):
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
                f"(the stream holds {info.num_frames} frames)"
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
    with _FrameReader(path, info) as reader:
        for numbers, frame in _wanted_frames(reader, unique):
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
    with _FrameReader(path, info) as reader:
        for numbers, frame in _wanted_frames(reader, unique):
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
    with _FrameReader(path, info) as reader:
        for first, last in spans:
            for index, _frame in reader.frames_from(first):
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
