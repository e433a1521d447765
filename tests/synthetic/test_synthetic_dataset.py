"""The ``synthetic_humans`` dataset and the ``make-synthetic`` / ``show`` commands."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hcframe.data import collate
from hcframe.registry import get_registry
from hcframe_video.partmaps import PartMapError, PartMapStore
from hcframe_video.synthetic.dataset import SyntheticHumans
from hcframe_video.synthetic.generate import WorldSpec, read_world_spec
from hcframe_video.synthetic.plugin import make_synthetic_command, show_command
from hcframe_video.synthetic.world import ACTION_NAMES, WorldConfig


def _args(spec: WorldSpec) -> dict:
    """The dataset's world arguments for ``spec`` (the tiny world's)."""
    return dict(num_train=spec.num_train, num_test=spec.num_test, world_seed=spec.seed,
                num_frames=spec.config.num_frames, workers=1)  # fmt: skip


def test_registered_as_a_dataset():
    record = get_registry().get("dataset", "synthetic_humans")
    assert record.factory is SyntheticHumans and record.provider == "hcframe-video"


def test_subsets_have_the_right_counts_labels_and_disjoint_videos(tiny_world):
    root, spec = tiny_world
    train = SyntheticHumans(root=str(root), subset="train", **_args(spec))
    test = SyntheticHumans(root=str(root), subset="test", **_args(spec))
    assert len(train) == 24 and len(test) == 12
    assert train.class_names == test.class_names == ACTION_NAMES and train.num_classes == 12
    assert train.labels() == [i % 12 for i in range(24)]
    assert Counter(test.labels()) == Counter(range(12))  # balanced
    train_ids = {train.video_id(i) for i in range(len(train))}
    test_ids = {test.video_id(i) for i in range(len(test))}
    assert not train_ids & test_ids
    for i in range(len(train)):
        assert Path(train.video_path(i)).is_file()
        assert f"/{ACTION_NAMES[train.labels()[i]]}/" in train.video_id(i)


def test_samples_carry_clips_and_aligned_ground_truth_parts(tiny_world):
    root, spec = tiny_world
    data = SyntheticHumans(root=str(root), subset="train", **_args(spec))
    data.num_views = 2
    data.target_store = data.ground_truth_parts()
    batch = collate([data[(i, 0)] for i in range(3)])
    assert batch["views"].shape == (3, 2, 3, 8, 32, 32) and batch["views"].dtype == torch.uint8
    assert batch["label"].tolist() == [0, 1, 2]
    assert batch["parts"].shape == (3, 2, 20, 8, 8, 8)
    sums = batch["parts"].float().sum(2)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=2e-3, rtol=0)  # full-frame views: all known
    # the part targets are the stored maps of exactly the frames in the clip, area-pooled 4x4
    store = data.ground_truth_parts()
    frames = batch["frame_indices"][1, 0].tolist()
    labels = torch.from_numpy(store.read_raw(data.video_id(1), frames).astype(np.int64))
    onehot = torch.nn.functional.one_hot(labels, 20).permute(3, 0, 1, 2).float()  # [K, T, 32, 32]
    pooled = torch.nn.functional.avg_pool3d(onehot[None], (1, 4, 4))[0]
    torch.testing.assert_close(batch["parts"][1, 0].float(), pooled, atol=1e-3, rtol=0)
    # clips are consecutive frames (stride 1) inside the 10-frame videos
    fi = batch["frame_indices"][0, 0]
    assert (fi.diff() == 1).all() and fi.min() >= 0 and fi.max() <= 9


def test_ground_truth_store_is_checked_against_the_world(tiny_world):
    root, spec = tiny_world
    data = SyntheticHumans(root=str(root), subset="test", **_args(spec))
    store = data.ground_truth_parts()
    assert isinstance(store, PartMapStore) and store.kind == "labels" and store.resolution == (32, 32)
    assert store.identity["producer"] == "synthetic ground truth"
    other = WorldSpec(config=spec.config, seed=spec.seed + 1, num_train=spec.num_train, num_test=spec.num_test)
    with pytest.raises(PartMapError, match="stale"):
        PartMapStore(root / "parts", expected_identity=other.parts_identity())


def test_other_world_arguments_on_an_existing_root_fail(tiny_world):
    root, spec = tiny_world
    with pytest.raises(ValueError, match="num_train: stored 24, requested 30"):
        SyntheticHumans(root=str(root), **{**_args(spec), "num_train": 30})
    with pytest.raises(ValueError, match="subset"):
        SyntheticHumans(root=str(root), subset="val", **_args(spec))


def test_check_refuses_what_the_constructor_refuses_without_generating(tiny_world, tmp_path, monkeypatch):
    # What `hcframe run --dry-run` and `hcframe info` use: the world's size and classes, no world.
    root, spec = tiny_world
    monkeypatch.setenv("HCFRAME_CACHE", str(tmp_path / "cache"))
    checked = SyntheticHumans.check(root=str(root), subset="test", **_args(spec))
    assert checked == (12, ACTION_NAMES) and checked == (len(SyntheticHumans(root=str(root), subset="test", **_args(spec))), ACTION_NAMES)
    assert SyntheticHumans.check(num_train=3, num_test=2, world_seed=5).num_videos == 3
    assert not (tmp_path / "cache").exists()  # a world not there yet is not generated by checking it
    for bad, message in (
        ({"num_train": 30}, "num_train: stored 24, requested 30"),  # root holds another world
        ({"clip_len": 0}, "clip_len: expected an integer >= 1, got 0"),
        ({"subset": "val"}, "subset: expected one of train, test, got 'val'"),
        ({"height": 33}, "height must be an even number of pixels"),
    ):
        with pytest.raises(ValueError, match=message):
            SyntheticHumans.check(root=str(root), **{**_args(spec), **bad})
        with pytest.raises(ValueError, match=message):  # the same as building it
            SyntheticHumans(root=str(root), **{**_args(spec), **bad})
    assert not (tmp_path / "cache").exists()


def _build_in_cache(cache: str) -> str:
    import os

    os.environ["HCFRAME_CACHE"] = cache
    data = SyntheticHumans(num_train=3, num_test=2, num_frames=4, world_seed=5, workers=1)
    return str(data.world_root)


def test_default_root_is_a_hashed_cache_folder_and_racing_builders_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("HCFRAME_CACHE", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        roots = pool.map(_build_in_cache, [str(tmp_path)] * 2)
    spec = WorldSpec(config=WorldConfig(num_frames=4), seed=5, num_train=3, num_test=2)
    expected = tmp_path / "synthetic" / spec.key()
    assert roots == [str(expected)] * 2
    assert read_world_spec(expected) == spec
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [spec.key()]  # no temporary folders left
    data = SyntheticHumans(num_train=3, num_test=2, num_frames=4, world_seed=5, workers=1)
    assert data.world_root == expected and len(data) == 3


def test_make_synthetic_command(tmp_path):
    out = tmp_path / "w"
    result = CliRunner().invoke(make_synthetic_command, [str(out), "--videos", "4", "--test-videos", "2", "--seed", "3",
                                                          "--frames", "6", "--workers", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 train + 2 test videos" in result.output
    spec = read_world_spec(out)
    assert (spec.seed, spec.num_train, spec.num_test, spec.config.num_frames) == (3, 4, 2, 6)
    assert len((out / "train.txt").read_text().splitlines()) == 4
    assert len(list((out / "videos").rglob("*.mp4"))) == 6
    # the world reads back as the dataset with the same arguments
    data = SyntheticHumans(root=str(out), subset="test", num_train=4, num_test=2, world_seed=3, num_frames=6)
    assert len(data) == 2
    bad = CliRunner().invoke(make_synthetic_command, [str(tmp_path / "x"), "--height", "31"])
    assert bad.exit_code == 2 and "height must be an even number" in bad.output


def test_show_writes_a_png_and_a_gif(tiny_world, tmp_path):
    root, _ = tiny_world
    png = tmp_path / "sheet.png"
    result = CliRunner().invoke(show_command, [str(root), "--out", str(png), "--clips", "3"])
    assert result.exit_code == 0, result.output
    image = Image.open(png)
    assert image.format == "PNG" and image.width >= 320 and image.height > 3 * 2 * 96
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # real frames, not a blank canvas
    gif = tmp_path / "sheet.gif"
    result = CliRunner().invoke(show_command, [str(root), "--out", str(gif), "--clips", "2", "--subset", "test"])
    assert result.exit_code == 0, result.output
    animated = Image.open(gif)
    assert animated.format == "GIF" and animated.n_frames == 10


def test_show_rejects_a_folder_that_is_not_a_world(tmp_path):
    result = CliRunner().invoke(show_command, [str(tmp_path), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 2 and "no world.json" in result.output


def test_show_builds_the_dataset_of_a_recipe(tiny_world, tmp_path):
    root, spec = tiny_world
    encoders = get_registry().names("encoder")
    if not encoders:
        pytest.skip("no encoder plugin installed: a recipe needs one")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""
[data]
name = "synthetic_humans"
root = "{root}"
num_train = {spec.num_train}
num_test = {spec.num_test}
world_seed = {spec.seed}
num_frames = {spec.config.num_frames}
workers = 1

[transform]
name = "normalize"

[model.encoder]
name = "{encoders[0]}"

[tasks.sup]
name = "supervised"
num_classes = 12
""")
    png = tmp_path / "from_recipe.png"
    result = CliRunner().invoke(show_command, [str(recipe), "--out", str(png), "--clips", "4", "-o", "data.subset=test"])
    assert result.exit_code == 0, result.output
    assert "4 clips" in result.output and Image.open(png).format == "PNG"
