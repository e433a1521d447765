"""Miniature video datasets written with PyAV once per test session (tiny frames, few frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from video_testdata import HMDB_CLASSES, UCF_CLASSES, UCF_GROUPS, hmdb_name, ucf_name, write_avi, write_mp4, write_video


@pytest.fixture(scope="session")
def ucf_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf101")
    notes = root / "ucfTrainTestlist"
    notes.mkdir()
    (notes / "classInd.txt").write_text("".join(f"{k + 1} {c}\r\n" for k, c in enumerate(UCF_CLASSES)))
    for k, cls in enumerate(UCF_CLASSES):
        for g in UCF_GROUPS:
            write_avi(root / ucf_name(cls, g, 1), num_frames=20 + 4 * k)
    for split in (1, 2, 3):
        test_groups = range(7 * (split - 1) + 1, 7 * split + 1)
        train, test = [], []
        for k, cls in enumerate(UCF_CLASSES):
            for g in UCF_GROUPS:
                name = ucf_name(cls, g, 1)
                (test.append(name) if g in test_groups else train.append(f"{name} {k + 1}"))
        (notes / f"trainlist{split:02d}.txt").write_text("\r\n".join(train) + "\r\n")
        (notes / f"testlist{split:02d}.txt").write_text("\r\n".join(test) + "\r\n")
    return root


@pytest.fixture(scope="session")
def hmdb_root(tmp_path_factory) -> Path:
    """Three classes x three videos; split s tags video (s-1) as test, the next as train, the
    last one as unused (tags 2, 1, 0 rotate with the split)."""
    root = tmp_path_factory.mktemp("hmdb51")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for cls in HMDB_CLASSES:
        for k in range(3):
            write_avi(root / cls / hmdb_name(cls, k), num_frames=24)
        for split in (1, 2, 3):
            tags = {(split - 1) % 3: 2, split % 3: 1, (split + 1) % 3: 0}
            lines = [f"{hmdb_name(cls, k)} {tags[k]} " for k in range(3)]
            (splits / f"{cls}_test_split{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def mixed_root(tmp_path_factory) -> Path:
    """A video folder (two classes) with good AVI/MP4/MKV files and corrupt, truncated and empty ones."""
    root = tmp_path_factory.mktemp("mixed")
    write_avi(root / "good" / "a.avi", num_frames=30)
    write_mp4(root / "good" / "b.mp4", num_frames=30)
    write_video(root / "good" / "c.mkv", 30, "libx264", 10)
    big = write_avi(root / "bad" / "full.avi", num_frames=60, width=64, height=48)
    data = big.read_bytes()
    big.unlink()
    (root / "bad" / "truncated.avi").write_bytes(data[: int(len(data) * 0.6)])
    (root / "bad" / "empty.mp4").write_bytes(b"")
    rng = np.random.default_rng(0)
    (root / "bad" / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return root
