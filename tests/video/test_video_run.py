"""A run over a folder with corrupt, truncated and empty videos completes, lists them and counts them."""

from __future__ import annotations

import json
import tomllib

from click.testing import CliRunner

from hcframe.cli import cli
from hcframe.recipe import dump_toml


def _recipe(tmp_path, root, max_bad_fraction):
    raw = {
        "data": {"name": "video_folder", "root": str(root), "clips": {"clip_len": 4, "stride": 1, "short_side": 16, "crop_size": 16}},
        "transform": {"name": "normalize"},
        "model": {"encoder": {"name": "tiny3d_test"}},
        "tasks": {"sup": {"name": "supervised", "num_classes": 2}},
        "train": {"steps": 3, "batch_size": 2, "log_every": 1, "max_bad_fraction": max_bad_fraction},
    }
    path = tmp_path / "folder.toml"
    path.write_text(dump_toml(raw))
    return path


def test_bad_videos_are_skipped_listed_and_counted(mixed_root, tmp_path):
    recipe = _recipe(tmp_path, mixed_root, 0.9)
    result = CliRunner().invoke(cli, ["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    bad = {v["path"].split("/")[-1]: v["reason"] for v in summary["bad_videos"]["videos"]}
    assert {"corrupt.mp4", "empty.mp4"} <= set(bad) and summary["bad_videos"]["count"] == len(bad)
    assert all(reason for reason in bad.values())
    for name in bad:  # reported once each, with the path
        assert result.stderr.count(f"{name}:") == 1
    # The run directory's resolved recipe writes the nested clips table out with every default.
    written = tomllib.loads((tmp_path / "run" / "recipe.toml").read_text())
    assert written["data"]["clips"] == {
        "clip_len": 4, "stride": 1, "short_side": 16, "crop_size": 16, "mode": "train", "num_clips": 10, "num_crops": 3,
        "seed": 0, "on_bad_video": "skip", "part_size": 0,
    }  # fmt: skip
    assert "[data.clips]" in (tmp_path / "run" / "recipe.toml").read_text()


def test_too_many_bad_videos_stop_the_run_with_a_clear_message(mixed_root, tmp_path):
    recipe = _recipe(tmp_path, mixed_root, 0.1)
    result = CliRunner().invoke(cli, ["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "could not be read (more than train.max_bad_fraction = 0.1)" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
