"""Teacher-cache files are verified, not just found: rerunning ``cache-teacher`` over damaged,
truncated or foreign files makes them again (naming each), and the result is byte for byte what
the first build wrote; reading such a file during training is one line naming it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from hcframe_parsing.cache import cache_teacher, open_teacher_cache
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.partmaps import PartMapError
from parsing_helpers import FolderVideos

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

LABELS = ["bg", "head", "body", "legs"]
RES = (12, 16)


def _flip_in_member(path, member: str) -> None:
    """Flip one bit inside the compressed bytes of ``member`` (the zip directory stays valid)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # after the local header
    data[start + info.compress_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _object_array_npz(path) -> None:
    """A well-formed archive whose frame list is a pickled object array (never unpickled)."""
    buffer = io.BytesIO()
    np.savez(buffer, frame_indices=np.array([0, 1], dtype=object), f000000=np.zeros((2, 4, 12, 16), np.uint8))
    path.write_bytes(buffer.getvalue())


def test_rerun_remakes_damaged_files_and_reports_them(tmp_path, video_folder, tiny_parser_file):
    teacher = TorchScriptTeacher(str(tiny_parser_file()), LABELS, [16, 24])
    dataset = FolderVideos(str(video_folder))
    cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False)
    store = open_teacher_cache(tmp_path / "c", teacher)
    files = {v: store.path_of(v) for v in store.video_ids()}
    original = {v: p.read_bytes() for v, p in files.items()}
    v0, v1, v2 = sorted(files)

    _flip_in_member(files[v0], "f000003.npy")  # a bad sector
    files[v1].write_bytes(original[v1][: len(original[v1]) // 2])  # a copy cut short
    _object_array_npz(files[v2])  # someone else's file

    # Training reads: one line naming the file, whatever is wrong with it.
    fresh = open_teacher_cache(tmp_path / "c", teacher)
    for video, frames in ((v0, [3]), (v1, [0]), (v2, [0])):
        with pytest.raises(PartMapError) as info:
            fresh.read(video, frames)
        message = str(info.value)
        assert f"cannot read {files[video]} (" in message and "\n" not in message
        assert message.endswith("make it again (for a teacher cache, rerun `hcframe cache-teacher`)")

    # The rerun checks every file: the three are made again, and named.
    messages: list[str] = []
    report = cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False, log=messages.append)
    assert report.written == [v0, v1, v2] and report.skipped == []
    assert len(messages) == 3
    assert messages[0].startswith(f"teacher cache: {files[v0]}: damaged or not a part-map file (")
    assert messages[1].startswith(f"teacher cache: {files[v1]}: damaged or not a part-map file (BadZipFile")
    assert messages[2].startswith(f"teacher cache: {files[v2]}: damaged or not a part-map file (ValueError: Object arrays")
    assert all(m.endswith("; making it again") for m in messages)
    assert {v: p.read_bytes() for v, p in files.items()} == original  # the writer is deterministic

    # Intact files are left alone.
    report = cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False, log=messages.append)
    assert report.skipped == [v0, v1, v2] and report.written == [] and len(messages) == 3


def test_a_file_with_maps_of_another_shape_is_not_counted_as_cached(tmp_path, video_folder, tiny_parser_file):
    teacher = TorchScriptTeacher(str(tiny_parser_file()), LABELS, [16, 24])
    dataset = FolderVideos(str(video_folder))
    cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, kind="labels", k=None, progress=False)
    path = open_teacher_cache(tmp_path / "c", teacher).path_of("clips/v0.mkv")
    buffer = io.BytesIO()
    np.savez(buffer, frame_indices=np.array([0], dtype=np.int64), f000000=np.zeros((6, 8), np.uint8))  # another resolution
    path.write_bytes(buffer.getvalue())
    messages: list[str] = []
    report = cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, kind="labels", k=None, progress=False, log=messages.append)
    assert report.written == ["clips/v0.mkv"]
    assert messages == [f"teacher cache: {path}: frame 0: maps of 6x8, the store's resolution is 12x16; making it again"]
