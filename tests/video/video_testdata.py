"""Writers of miniature test videos and the names of the generated dataset trees (imported by the
video tests under this unique module name, so it never collides with another folder's conftest)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT = 32, 24
UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
UCF_GROUPS = [1, 8, 15, 22]  # one group in the test list of each official split (1-7, 8-14, 15-21)
HMDB_CLASSES = ["brush_hair", "cartwheel", "sword_exercise"]


def frame_pattern(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Gray RGB frame: the top half's level encodes the frame number (4 levels per frame, up to 63),
    the bottom half is a horizontal ramp. Flat gray survives lossy 4:2:0 coding within a few levels."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[: height // 2] = min(255, index * 4)
    frame[height // 2 :] = (np.arange(width) * 255 // max(1, width - 1))[None, :, None]
    return frame


def frame_level(frames: np.ndarray) -> np.ndarray:
    """The frame-number level of decoded ``[N, H, W, 3]`` frames (mean of the top half, all channels)."""
    h = frames.shape[1]
    return frames[:, 1 : h // 2 - 1].reshape(len(frames), -1).mean(axis=1)


def write_video(path: Path | str, num_frames: int, codec: str, gop: int, width: int = WIDTH, height: int = HEIGHT,
                rate: int = 25) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".avi": "avi", ".mp4": "mp4", ".mkv": "matroska"}[path.suffix]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.codec_context.options = {"keyint_min": str(gop), "sc_threshold": "0", "threads": "1"}
        else:
            stream.codec_context.options = {"qscale": "2"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_avi(path, num_frames: int = 30, **kw) -> Path:
    """MPEG-4 Part 2 in AVI with a keyframe every 12 frames (as UCF101/HMDB51 ship)."""
    return write_video(path, num_frames, "mpeg4", 12, **kw)


def write_mp4(path, num_frames: int = 30, **kw) -> Path:
    """H.264 in MP4 with one keyframe for the whole video (as re-encoded Kinetics often is)."""
    return write_video(path, num_frames, "libx264", 1000, **kw)


def ucf_name(cls: str, group: int, clip: int) -> str:
    # The official archive spells this one class differently in its file names.
    stem = "HandStandPushups" if cls == "HandstandPushups" else cls
    return f"{cls}/v_{stem}_g{group:02d}_c{clip:02d}.avi"


def hmdb_name(cls: str, k: int) -> str:
    return f"April_09_{cls}_u_nm_np1_ba_goo_{k}.avi"
