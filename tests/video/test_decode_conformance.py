"""Decoding conformance: frame ``i`` is the ``i``-th presented frame, in every container the datasets use.

Each file of the matrix is written here with PyAV; every frame carries its own number in its
pixels (six horizontal bands, one bit each, black or white: robust to lossy coding, readable
from any crop that spans the frame's height, and after resizing). The reference for "frame i" is
the encoding side (the number painted into the frame) and, independently, a plain PyAV
decode-all of the file with the frames sorted by pts. Every index must come back exactly through
the public decode functions and through a dataset's training and test views.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from hcframe.data import BadVideo
from hcframe_video.check import scan_video, videos_in_folder
from hcframe_video.clips import ClipSampling, VideoClipDataset
from hcframe_video.datasets import VIDEO_EXTENSIONS, VideoFolder, VideoList
from hcframe_video.decode import decode_boxes, decode_frames, probe_video
from hcframe_video.prepare import transcode_video

BITS = 6  # frame numbers 0..63
DARK, BRIGHT = 32, 224
FRAMES = 60


def numbered_frame(index: int, width: int, height: int) -> np.ndarray:
    """RGB frame whose horizontal band ``b`` (top first) is bright when bit ``b`` of ``index`` is set."""
    assert 0 <= index < 2**BITS
    frame = np.full((height, width, 3), DARK, dtype=np.uint8)
    for b in range(BITS):
        if index >> b & 1:
            frame[b * height // BITS : (b + 1) * height // BITS] = BRIGHT
    return frame


def read_numbers(frames: np.ndarray) -> np.ndarray:
    """The numbers painted into RGB frames ``[..., H, W, 3]`` (the middle half of each band's rows,
    all columns). Fails when a band is neither clearly dark nor clearly bright (a blend of frames)."""
    height = frames.shape[-3]
    numbers = np.zeros(frames.shape[:-3], dtype=np.int64)
    for b in range(BITS):
        lo, hi = b * height / BITS, (b + 1) * height / BITS
        rows = slice(int(np.ceil(lo + (hi - lo) / 4)), int(np.floor(hi - (hi - lo) / 4)) or None)
        level = frames[..., rows, :, :].astype(np.float64).mean(axis=(-3, -2, -1))
        assert np.all((level < 96) | (level > 160)), f"band {b} is undecided: levels {np.unique(level.round())}"
        numbers |= (level > 128).astype(np.int64) << b
    return numbers


def write_numbered(path: Path, container_format: str, codec: str, *, width: int = 64, height: int = 48, gop: int = 12,
                   options: dict[str, str] | None = None, max_b_frames: int | None = None,
                   durations_ms: list[int] | None = None) -> Path:
    """``FRAMES`` numbered frames at 25 fps (or with the given per-frame durations: variable rate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = len(durations_ms) if durations_ms else FRAMES
    time_base = Fraction(1, 1000) if durations_ms else Fraction(1, 25)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.time_base = time_base
        if max_b_frames is not None:
            stream.codec_context.max_b_frames = max_b_frames
        stream.codec_context.options = dict(options or {})
        pts = 0
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(numbered_frame(i, width, height), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            pts += durations_ms[i] if durations_ms else 1
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


X264 = {"bframes": "3", "b_pyramid": "normal", "keyint_min": "12", "sc_threshold": "0", "threads": "1"}
MPEG4 = {"qscale": "2"}
VFR_DURATIONS_MS = [40] * 20 + [80] * 10 + [20] * 30  # the variable-rate file


def _packets(path: Path) -> list[tuple[int, int | None, bool]]:
    with av.open(str(path)) as container:
        return [(p.pts, p.dts, p.is_keyframe) for p in container.demux(video=0) if p.size]


def has_b_frames(path: Path) -> bool:
    """Decode order differs from presentation order."""
    pts = [p for p, _, _ in _packets(path)]
    return pts != sorted(pts)


def is_variable_rate(path: Path) -> bool:
    gaps = np.diff(sorted(p for p, _, _ in _packets(path)))
    return len(set(gaps.tolist())) > 1


def starts_late(path: Path) -> bool:
    with av.open(str(path)) as container:
        return (container.streams.video[0].start_time or 0) > 0


def starts_mid_gop(path: Path) -> bool:
    return not _packets(path)[0][2]


def has_no_timestamps(path: Path) -> bool:
    return all(pts is None and dts is None for pts, dts, _ in _packets(path))


#: name -> (file name, what the file must show to be the case it stands for, first painted number)
CASES = {
    "avi_mpeg4_bframes_320x240": ("avi_b.avi", has_b_frames, 0),
    "avi_mpeg4": ("avi.avi", lambda p: not has_b_frames(p), 0),
    "mp4_h264_bpyramid": ("h264.mp4", has_b_frames, 0),
    "mkv_h264_bpyramid": ("h264.mkv", has_b_frames, 0),
    "webm_vp9": ("vp9.webm", lambda p: True, 0),
    "ts_h264_nonzero_start": ("h264.ts", starts_late, 0),
    "ts_h264_cut_mid_gop": ("cut.ts", starts_mid_gop, 12),
    "mkv_h264_vfr": ("vfr.mkv", is_variable_rate, 0),
    "prepared_copy_of_avi_bframes": ("prepared/avi_b.mp4", lambda p: True, 0),
    "prepared_copy_of_vfr": ("prepared/vfr.mp4", lambda p: not is_variable_rate(p), 0),
    # Beyond the datasets' containers (a video list may name anything): an MPEG-2 program stream
    # with open GOPs, whose demuxer guesses timestamps after a seek (frames are then read from the
    # top), and a raw H.264 stream without timestamps (frames are numbered in output order).
    "mpg_mpeg2_open_gop": ("program.mpg", has_b_frames, 0),
    "h264_elementary_stream": ("raw.h264", has_no_timestamps, 0),
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conformance")
    # The exact case: Xvid-style MPEG-4 Part 2 with two B-frames, GOP 12, 320x240.
    write_numbered(root / "avi_b.avi", "avi", "mpeg4", width=320, height=240, max_b_frames=2, options=MPEG4)
    write_numbered(root / "avi.avi", "avi", "mpeg4", max_b_frames=0, options=MPEG4)
    write_numbered(root / "h264.mp4", "mp4", "libx264", options=X264)
    write_numbered(root / "h264.mkv", "matroska", "libx264", options=X264)
    write_numbered(root / "vp9.webm", "webm", "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8", "threads": "1"})
    ts = write_numbered(root / "h264.ts", "mpegts", "libx264", options=X264)
    # A transport stream picked up in the middle of its first GOP (as a broadcast capture starts):
    # its first packets cannot be decoded, so its frame 0 is the first keyframe's (painted 12).
    data = ts.read_bytes()
    (root / "cut.ts").write_bytes(data[188 * 20 :])  # whole 188-byte TS packets
    write_numbered(root / "vfr.mkv", "matroska", "libx264", options=X264, durations_ms=VFR_DURATIONS_MS)
    write_numbered(root / "program.mpg", "mpeg", "mpeg2video", max_b_frames=2)
    write_numbered(root / "raw.h264", "h264", "libx264", options=X264)
    (root / "prepared").mkdir()
    for name in ("avi_b.avi", "vfr.mkv"):  # `hcframe prepare` copies: frame i stays frame i
        transcode_video(str(root / name), str(root / "prepared" / (name[:-4] + ".mp4")), short_side=48, keyframe_interval=16)
    return root


def reference_frames(path: Path) -> np.ndarray:
    """Every frame of a plain PyAV decode of the whole file, sorted by presentation time."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        if all(f.pts is not None for f in frames):
            frames.sort(key=lambda f: f.pts)
        return np.stack([f.to_ndarray(format="rgb24") for f in frames])


def case_file(matrix: Path, case: str) -> tuple[str, np.ndarray]:
    """The file of ``case`` and the number painted into each of its presented frames."""
    name, _, first = CASES[case]
    path = matrix / name
    count = len(VFR_DURATIONS_MS) if "vfr" in case else FRAMES
    return str(path), np.arange(first, count)


@pytest.mark.parametrize("case", list(CASES))
def test_file_is_the_case_and_a_plain_decode_gives_the_painted_numbers(matrix, case):
    path, expected = case_file(matrix, case)
    assert CASES[case][1](Path(path)), f"{case}: the written file does not show the property it stands for"
    np.testing.assert_array_equal(read_numbers(reference_frames(Path(path))), expected)
    info = probe_video(path)
    assert info.num_frames == len(expected)


@pytest.mark.parametrize("case", list(CASES))
def test_every_index_returns_its_frame_through_decode_frames(matrix, case):
    path, expected = case_file(matrix, case)
    reference = reference_frames(Path(path))
    info = probe_video(path)
    singles = np.stack([decode_frames(path, [i], info=info)[0][0] for i in range(info.num_frames)])
    np.testing.assert_array_equal(read_numbers(singles), expected)
    np.testing.assert_array_equal(singles, reference)  # bit-identical to the plain decode
    # All at once, in any order (one pass with seeks between far-apart frames), and without a probe.
    wanted = list(range(info.num_frames))[::-1]
    together, unique = decode_frames(path, wanted)
    assert unique == list(range(info.num_frames))
    np.testing.assert_array_equal(together, reference)
    # Scattered picks in one call: the segments seek to different keyframes.
    picks = [info.num_frames - 1, 1, 30, 29, 47, 13, 2]
    frames, unique = decode_frames(path, picks, size=(32, 24), info=info)
    np.testing.assert_array_equal(read_numbers(frames), expected[unique])


@pytest.mark.parametrize("case", list(CASES))
def test_every_index_returns_its_frame_through_decode_boxes(matrix, case):
    path, expected = case_file(matrix, case)
    info = probe_video(path)
    side = info.height - info.height % 2
    box = ((info.width - side) // 2 // 2 * 2, 0, side, side)  # a centred square spanning the height
    got = [decode_boxes(path, [([i], box)], (24, 24), info=info)[0, 0] for i in range(info.num_frames)]
    np.testing.assert_array_equal(read_numbers(np.stack(got)), expected)
    # Two views of one sample in one pass, overlapping and far apart.
    n = info.num_frames
    views = [(list(range(n - 9, n, 2)), box), (list(range(3, 12, 2)), (0, 0, side, side))]
    out = decode_boxes(path, views, (24, 24), info=info)
    np.testing.assert_array_equal(read_numbers(out), expected[np.asarray([v for v, _ in views])])


@pytest.mark.parametrize("case", list(CASES))
def test_training_and_test_views_show_their_frame_indices(matrix, case):
    path, expected = case_file(matrix, case)
    n = len(expected)
    common = {"short_side": 24, "crop_size": 24}  # a crop spans the frame's height: all bands visible
    # Training: one view over the whole video, then short strided views at random starts.
    whole = VideoClipDataset([path], [0], ["x"], str(Path(path).parent), clips=ClipSampling(clip_len=n, stride=1, **common))
    sample = whole[(0, 0)]
    assert sample["frame_indices"][0].tolist() == list(range(n))
    np.testing.assert_array_equal(read_numbers(sample["views"].permute(0, 2, 3, 4, 1).numpy()), expected[None])
    short = VideoClipDataset([path], [0], ["x"], str(Path(path).parent), clips=ClipSampling(clip_len=4, stride=5, **common))
    short.num_views = 3
    for epoch in range(6):
        sample = short[(0, epoch)]
        assert not isinstance(sample, BadVideo), sample
        shown = read_numbers(sample["views"].permute(0, 2, 3, 4, 1).numpy())
        np.testing.assert_array_equal(shown, expected[sample["frame_indices"].numpy()])
    # Testing: a clip at every start, so every index is the first frame of a clip once.
    test = VideoClipDataset([path], [0], ["x"], str(Path(path).parent),
                            clips=ClipSampling(clip_len=4, stride=1, mode="test", num_clips=n - 3, num_crops=2, crop_size=24))
    sample = test[0]
    assert not isinstance(sample, BadVideo), sample
    assert sorted(set(sample["frame_indices"][:, 0].tolist())) == list(range(n - 3))
    shown = read_numbers(sample["views"].permute(0, 2, 3, 4, 1).numpy())
    np.testing.assert_array_equal(shown, expected[sample["frame_indices"].numpy()])


def test_no_valid_file_is_reported_bad_and_every_container_is_found(matrix, tmp_path):
    for ext in (".ts", ".mkv", ".webm", ".avi", ".mp4"):
        assert ext in VIDEO_EXTENSIONS
    # check-videos' scan passes every file, and a video list of all of them in test mode (the
    # last clip ends on the last frame) gives no bad video.
    for case in CASES:
        path, _ = case_file(matrix, case)
        assert scan_video(path) == (path, None), case
    listing = tmp_path / "videos.txt"
    listing.write_text("".join(f"{CASES[case][0]} 0\n" for case in CASES))
    videos = VideoList(str(listing), root=str(matrix),
                       clips=ClipSampling(clip_len=8, stride=2, mode="test", num_clips=3, num_crops=1, crop_size=24))
    for i in range(len(videos)):
        sample = videos[i]
        assert not isinstance(sample, BadVideo), sample
        assert sample["frame_indices"][-1, -1] == videos.video_info(i).num_frames - 1
    # A video folder finds every file of the datasets' containers by default.
    folder = tmp_path / "folder"
    found = [case for case in CASES if Path(CASES[case][0]).suffix in VIDEO_EXTENSIONS]
    assert len(found) == len(CASES) - 2  # all but the .mpg and .h264 files
    for case in found:
        source = Path(case_file(matrix, case)[0])
        target = folder / "cls" / f"{case}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    assert len(videos_in_folder(str(folder))) == len(found)
    assert len(VideoFolder(str(folder), clips=ClipSampling(mode="test", crop_size=24))) == len(found)
