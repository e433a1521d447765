"""The video datasets' one clip-sampling table: ``clips`` (:class:`ClipSampling`), a nested recipe
table checked against its own fields, with each dataset's own defaults for the keys it leaves out."""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs
import pytest

from hcframe.recipe import RecipeError, dump_toml, load_recipe, parse_recipe
from hcframe_video.clips import ClipSampling
from hcframe_video.synthetic.dataset import WORLD_CLIPS

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.toml"
FIELDS = ("clip_len", "stride", "short_side", "crop_size", "mode", "num_clips", "num_crops", "seed", "on_bad_video", "part_size")


def test_a_partial_clips_table_keeps_the_datasets_own_defaults():
    # The synthetic world's clips are 8 consecutive frames of the whole frame: setting clip_len
    # alone must not bring in ClipSampling's file-dataset defaults (stride 2, 128 / 112 pixels).
    world = load_recipe(QUICKSTART, ["data.clips.clip_len=4"]).raw["data"]["clips"]
    assert world == {**attrs.asdict(WORLD_CLIPS), "clip_len": 4}
    assert (world["stride"], world["short_side"], world["crop_size"], world["num_clips"]) == (1, 0, 0, 2)
    ucf = load_recipe(QUICKSTART, ['data={name = "ucf101", root = "/nowhere", clips = {stride = 4}}']).raw["data"]["clips"]
    assert ucf == {**attrs.asdict(ClipSampling()), "stride": 4}
    assert (ucf["clip_len"], ucf["short_side"], ucf["crop_size"], ucf["num_clips"], ucf["num_crops"]) == (16, 128, 112, 10, 3)


def test_the_clips_table_round_trips_through_the_resolved_recipe():
    recipe = load_recipe(QUICKSTART, ["data.clips.part_size=4", "eval.0.test_data.clips.num_clips=3"])
    text = dump_toml(recipe.raw)
    written = tomllib.loads(text)
    assert list(written["data"]["clips"]) == list(FIELDS)  # every key written out, in ClipSampling's order
    assert written["data"]["clips"]["part_size"] == 4 and written["eval"][0]["test_data"]["clips"]["num_clips"] == 3
    again = parse_recipe(written, "recipe.toml")
    assert again.data == recipe.data and again.data.args["clips"] == attrs.evolve(WORLD_CLIPS, part_size=4)
    assert again.evaluations == recipe.evaluations and dump_toml(again.raw) == text


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.clips.num_crop=2", "data.clips.num_crop: unknown key; did you mean 'num_crops'?"),
        ("data.clips.stride=0", "data.clips.stride: expected an integer >= 1, got 0"),
        ("data.clips.on_bad_video='ignore'", "data.clips.on_bad_video: 'ignore' is not allowed; use one of 'skip', 'raise'"),
        ("data.clips.stride=1.5", "data.clips.stride: expected an integer, got float 1.5"),
    ],
)
def test_a_bad_clips_key_is_one_line_naming_it(override, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, [override])
    assert str(info.value) == f"{QUICKSTART}: {message}"


def test_resolving_fills_each_zero_from_what_it_stands_for():
    assert WORLD_CLIPS.resolved(24) == attrs.evolve(WORLD_CLIPS, short_side=24, crop_size=24, part_size=6)
    assert ClipSampling(short_side=20, crop_size=0).resolved().crop_size == 20
    with pytest.raises(ValueError, match=r"^clips\.short_side: 0 \(the frames' own short side\) needs a dataset"):
        ClipSampling(short_side=0).resolved()  # a file dataset does not know its frames' size
    with pytest.raises(ValueError, match=r"^clips\.crop_size: 40 is larger than short_side 32;"):
        attrs.evolve(WORLD_CLIPS, crop_size=40).resolved(32)


def test_datasets_take_only_a_clip_sampling_in_python(tmp_path):
    from hcframe_video.clips import VideoClipDataset
    from hcframe_video.synthetic.dataset import SyntheticHumans

    with pytest.raises(TypeError, match=r"^clips: expected a ClipSampling, got dict \{'clip_len': 4\}$"):
        VideoClipDataset([], [], [], str(tmp_path), clips={"clip_len": 4})
    with pytest.raises(TypeError, match=r"^clips: expected a ClipSampling, got dict"):
        SyntheticHumans.check(root=str(tmp_path / "world"), clips={"clip_len": 4})
    assert not (tmp_path / "world").exists()
