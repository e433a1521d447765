"""The teacher pass at dataset scale: frames batched across videos (full batches only, one frame
size per batch), videos shared out over ranks (in process and under torchrun with two gloo ranks)
writing the same files as one process, resuming with verification, caching only the frames
training samples, a smaller SCHP input size, and the command's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import hcframe
from hcframe_parsing.cache import cache_teacher, cached_frame_indices, open_teacher_cache, run_teacher, shard_indices
from hcframe_parsing.cli import cache_teacher_command
from hcframe_parsing.schp import SCHPTeacher
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.decode import decode_frames, probe_video
from hcframe_video.partmaps import PartMapStore
from parsing_helpers import random_schp_state, write_video

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

LABELS = ["bg", "head", "body", "legs"]
RES = (6, 8)
# (class folder, name, frames, height, width): 22 frames, two frame sizes.
VIDEOS = [("a", "v0", 7, 24, 32), ("a", "v1", 5, 24, 32), ("b", "v2", 6, 16, 20), ("b", "v3", 4, 24, 32)]


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for folder, name, frames, h, w in VIDEOS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_video(root / folder / f"{name}.mkv", rng.integers(0, 256, size=(frames, h, w, 3), dtype=np.uint8))
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return _tree(tmp_path / "videos")


def _dataset(root: Path, stride: int = 2):
    return hcframe.get_registry().create("dataset", "video_folder", root=str(root), clip_len=3, stride=stride, short_side=16, crop_size=16)


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "videos").iterdir())}


class RecordingTeacher(hcframe.Teacher):
    """A fixed random 3x3 conv parser (4 classes) that records the shape of every batch it gets."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=generator))
        self.label_names = tuple(LABELS)
        self.batches: list[tuple[int, ...]] = []

    def identity(self) -> dict[str, Any]:
        return {"architecture": "recording-test-teacher"}

    def forward(self, frames, output_size: Sequence[int] | None = None):
        self.batches.append(tuple(frames.shape))
        logits = F.conv2d(frames, self.weight, padding=1)
        return F.interpolate(logits, size=tuple(output_size or frames.shape[-2:]), mode="bilinear", align_corners=False)


def _online_logits(teacher, dataset, i: int) -> tuple[torch.Tensor, list[int]]:
    """The teacher on one video alone, every frame, in one forward (the reference)."""
    path = dataset.video_path(i)
    rgb, frames = decode_frames(path, list(range(probe_video(path).num_frames)))
    return run_teacher(teacher, torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0, RES), frames


def test_frames_are_batched_across_videos_in_full_batches_of_one_size(tmp_path, tree):
    teacher, dataset = RecordingTeacher(), _dataset(tree)
    report = cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, kind="logits", batch_size=4, progress=False)
    assert report.frames == 22 and len(report.written) == 4
    # 16 frames of 24x32 (7 + 5 + 4) -> 4 batches that span videos (per video it would take 5),
    # 6 frames of 16x20 -> 2 batches, the second padded: every forward has 4 frames of one size.
    assert sorted(teacher.batches) == [(4, 3, 16, 20)] * 2 + [(4, 3, 24, 32)] * 4
    store = open_teacher_cache(tmp_path / "c", teacher)
    for i in range(len(dataset)):
        online, frames = _online_logits(teacher, dataset, i)
        stored = torch.from_numpy(store.read_raw(dataset.video_id(i), frames).astype(np.float32))
        assert stored.shape == online.shape
        torch.testing.assert_close(stored, online, atol=2e-3 * float(online.abs().max()), rtol=0)  # float16
    # Decoding in two worker processes (videos arrive interleaved) writes the same files.
    cache_teacher(RecordingTeacher(), dataset, tmp_path / "w", resolution=RES, kind="logits", batch_size=4, progress=False, workers=2)
    assert _files(tmp_path / "w") == _files(tmp_path / "c")


def test_shards_cover_every_video_once():
    shards = [shard_indices(10, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match="rank 3"):
        shard_indices(10, 3, 3)


@pytest.fixture(scope="module")
def small_schp() -> SCHPTeacher:
    """An SCHP teacher in the public LIP layout with random weights, at a 32x32 input to stay cheap."""
    return SCHPTeacher.from_state_dict(random_schp_state("lip", seed=3), input_size=(32, 32))


@pytest.mark.parametrize("teacher_name, kind", [("torchscript", "labels"), ("torchscript", "logits"), ("schp", "topk")])
def test_two_ranks_write_the_files_of_one_process(tmp_path, tree, tiny_parser_file, small_schp, teacher_name, kind):
    teacher = TorchScriptTeacher(str(tiny_parser_file()), LABELS, [16, 24]) if teacher_name == "torchscript" else small_schp
    dataset = _dataset(tree)
    options = dict(resolution=RES, kind=kind, k=3, batch_size=8, progress=False)
    cache_teacher(teacher, dataset, tmp_path / "one", **options)
    # Rank 1 first: it opens (creates) the folder itself when it is alone, as an array job would.
    second = cache_teacher(teacher, dataset, tmp_path / "two", rank=1, world_size=2, **options)
    first = cache_teacher(teacher, dataset, tmp_path / "two", rank=0, world_size=2, **options)
    assert second.written == ["a/v1.mkv", "b/v3.mkv"] and first.written == ["a/v0.mkv", "b/v2.mkv"]
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 4
    if kind == "logits":  # float16 logits: equal within tolerance (here bit for bit as well)
        for name in one:
            a, b = np.load(tmp_path / "one" / "videos" / name), np.load(tmp_path / "two" / "videos" / name)
            for member in a.files:
                np.testing.assert_allclose(b[member].astype(np.float32), a[member].astype(np.float32), atol=1e-3)
    else:
        assert one == two  # labels / top-k: the same bytes
    meta = [json.loads((tmp_path / d / "meta.json").read_text()) for d in ("one", "two")]
    assert meta[0]["identity"] == meta[1]["identity"]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["dataset_videos"] == 4 and manifest["cached_videos"] == 4 and manifest["complete"]


def test_resume_skips_verified_videos_and_redoes_broken_ones(tmp_path, tree, tiny_parser_file):
    teacher, dataset = TorchScriptTeacher(str(tiny_parser_file()), LABELS, [16, 24]), _dataset(tree)
    cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False)
    original = _files(tmp_path / "c")
    files = tmp_path / "c" / "videos"
    truncated = files / "a%2Fv1.mkv.npz"
    truncated.write_bytes(original["a%2Fv1.mkv.npz"][:-40])  # the zip directory is cut off
    (files / "b%2Fv2.mkv.npz").unlink()
    report = cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False)
    assert report.written == ["a/v1.mkv", "b/v2.mkv"] and report.skipped == ["a/v0.mkv", "b/v3.mkv"]
    assert _files(tmp_path / "c") == original


def test_every_k_stride_caches_the_frames_training_samples(tmp_path, tree, tiny_parser_file):
    parser = tiny_parser_file()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(_recipe(tree, parser, tmp_path / "cache", stride=2))
    args = [str(recipe), "--every-k", "stride", "--resolution", *map(str, RES), "--kind", "logits", "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(cache_teacher_command, args)
    assert result.exit_code == 0, result.output
    assert "4 videos written (14 frames)" in result.output
    teacher = TorchScriptTeacher(str(parser), LABELS, [16, 24])
    store = open_teacher_cache(tmp_path / "cache", teacher)
    assert store.identity["every_k"] == 2
    held = {v: store.frame_indices(v).tolist() for v in store.video_ids()}
    assert held == {"a/v0.mkv": [0, 2, 4, 6], "a/v1.mkv": [0, 2, 4], "b/v2.mkv": [0, 2, 4, 5], "b/v3.mkv": [0, 2, 3]}
    assert held["b/v2.mkv"] == cached_frame_indices(6, 2)

    # What training reads: a clip at an even start gets exactly its frames' targets; a clip
    # shorter than its span repeats the (stored) last frame; an odd start reads the stored frame
    # before each of its frames (nearest, ties to the earlier one).
    dataset = _dataset(tree)
    online, _ = _online_logits(teacher, dataset, 2)  # b/v2: 6 frames
    probs = torch.softmax(online, dim=1)

    def read(frames):
        return store.read("b/v2.mkv", frames).transpose(0, 1)

    torch.testing.assert_close(read([0, 2, 4]), probs[[0, 2, 4]], atol=2e-3, rtol=0)
    torch.testing.assert_close(read([4, 5, 5]), probs[[4, 5, 5]], atol=2e-3, rtol=0)
    torch.testing.assert_close(read([1, 3]), probs[[0, 2]], atol=2e-3, rtol=0)

    # Training opens the cache through the task: silent when the clips step by the cache's step,
    # a warning when they step by 1 (frames 0, 0, 2, 2, ... would share targets).
    task = hcframe.get_registry().create("task", "parsing_distill", teacher=teacher, cache=str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert task.target_store(_dataset(tree, stride=2)) is not None
    with pytest.warns(UserWarning, match=r"holds one frame in 2 \(every_k\) but the dataset.s clips step 1 frame"):
        task.target_store(_dataset(tree, stride=1))


def _recipe(tree: Path, parser: Path, cache: Path, stride: int = 2, teacher: str | None = None) -> str:
    teacher = teacher or f'name = "torchscript"\npath = "{parser}"\nlabel_names = {json.dumps(LABELS)}\ninput_size = [16, 24]'
    return f"""
[data]
name = "video_folder"
root = "{tree}"
clip_len = 3
stride = {stride}
short_side = 16
crop_size = 16

[transform]
name = "normalize"

[model.encoder]
name = "r3d_18"

[tasks.parsing]
name = "parsing_distill"
cache = "{cache}"

[tasks.parsing.teacher]
{teacher}
"""


def test_cache_teacher_refuses_a_bad_recipe_with_one_line_and_exit_2(tmp_path, tree, tiny_parser_file):
    runner = CliRunner()
    recipe = tmp_path / "recipe.toml"
    parser = tiny_parser_file()
    cases = {
        "tasks.parsing.tempreature": _recipe(tree, parser, tmp_path / "c").replace("[tasks.parsing]\n", "[tasks.parsing]\ntempreature = 2.0\n"),
        "missing.pt": _recipe(tree, parser, tmp_path / "c", teacher='name = "torchscript"\npath = "missing.pt"\nlabel_names = ["a", "b"]\ninput_size = [8, 8]'),
        "video folder root": _recipe(tree / "nowhere", parser, tmp_path / "c"),
        "teacher.input_size": _recipe(tree, parser, tmp_path / "c", teacher='name = "schp"\ncheckpoint = "w.pth"\ninput_size = [0, 64]'),
        "it needs no cache": _recipe(tree, parser, tmp_path / "c", teacher='name = "synthetic_ground_truth"'),  # online = False
    }
    for needle, text in cases.items():
        recipe.write_text(text)
        result = runner.invoke(cache_teacher_command, [str(recipe), "--no-progress", "--device", "cpu"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (needle, result.output)
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert not (tmp_path / "c").exists()  # nothing was started
    recipe.write_text(_recipe(tree, parser, tmp_path / "c"))
    result = runner.invoke(cache_teacher_command, [str(recipe), "--every-k", "two", "--device", "cpu"])
    assert result.exit_code == 2 and "--every-k two" in result.output


def test_schp_input_size_option_is_used_and_part_of_the_identity(small_schp):
    seen = []
    handle = small_schp.model.conv1.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        with torch.no_grad():
            small_schp(torch.rand(1, 3, 30, 40), output_size=(6, 8))
    finally:
        handle.remove()
    assert seen == [(1, 3, 32, 32)]  # frames letterboxed into the asked size, not 473x473
    # In the identity, so a cache made at one size is refused by a teacher at another (the
    # refusal itself: test_parsing_cache.py::test_changed_checkpoint_or_input_size_invalidates_the_cache).
    assert small_schp.identity()["input_size"] == [32, 32]
    with pytest.raises(ValueError, match=r"teacher.input_size must be \[height, width\]"):
        SCHPTeacher("w.pth", input_size=[64])


def test_torchrun_two_ranks_write_the_cache_of_one_process(tmp_path, tree, tiny_parser_file):
    parser = tiny_parser_file()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(_recipe(tree, parser, tmp_path / "one"))
    common = ["--resolution", *map(str, RES), "--k", "3", "--batch-frames", "3", "--no-progress", "--device", "cpu"]
    # The same kernels as the ranks, which run one thread each: CPU convolutions may round
    # differently with another thread count (the plugin README says when files are identical).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = CliRunner().invoke(cache_teacher_command, [str(recipe), *common])
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hcframe", "cache-teacher", str(recipe), "--out", str(tmp_path / "two"), *common]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 reports, with the totals of both ranks.
    assert proc.stdout.count("teacher cache") == 1 and "4 videos written (22 frames)" in proc.stdout and "by 2 ranks" in proc.stdout
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["world_size"] == 2
    store = PartMapStore(tmp_path / "two")
    assert store.identity == PartMapStore(tmp_path / "one").identity and store.video_ids() == ["a/v0.mkv", "a/v1.mkv", "b/v2.mkv", "b/v3.mkv"]
