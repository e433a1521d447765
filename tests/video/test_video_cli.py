"""``hcframe prepare`` and ``hcframe check-videos`` through their click commands."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from hcframe_video.check import check_videos_command
from hcframe_video.datasets import UCF101
from hcframe_video.decode import probe_video
from hcframe_video.prepare import prepare_command

from video_testdata import ucf_name


def test_prepare_transcodes_keeps_layout_and_resumes(ucf_root, tmp_path):
    dst = tmp_path / "ucf_small"
    runner = CliRunner()
    result = runner.invoke(prepare_command, [str(ucf_root), str(dst), "--short-side", "16", "--keyframe-interval", "4", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "12 transcoded, 0 already done, 0 failed" in result.output
    assert (dst / "ucfTrainTestlist" / "trainlist02.txt").read_text() == (ucf_root / "ucfTrainTestlist" / "trainlist02.txt").read_text()
    out = dst / ucf_name("Archery", 8, 1).replace(".avi", ".mp4")
    info, source = probe_video(str(out)), probe_video(str(ucf_root / ucf_name("Archery", 8, 1)))
    assert (info.width, info.height) == (22, 16)  # 21.33 rounded to even for H.264
    assert info.num_frames == source.num_frames and info.average_rate == source.average_rate
    assert not list(dst.rglob("*.partial.mp4"))
    # The split files name .avi; the dataset finds the .mp4 copies.
    prepared = UCF101(str(dst), split=1, subset="train", clip_len=4, stride=2, short_side=16, crop_size=16)
    assert len(prepared) == 9 and all(prepared.video_id(i).endswith(".mp4") for i in range(9))
    assert prepared[0]["views"].shape == (1, 3, 4, 16, 22)  # train views: the whole (prepared) frame
    # Resume: remove one output; only that one is redone.
    out.unlink()
    again = runner.invoke(prepare_command, [str(ucf_root), str(dst), "--short-side", "16", "--workers", "1"])
    assert again.exit_code == 0 and "1 transcoded, 11 already done, 0 failed" in again.output


def test_prepare_reports_bad_sources(mixed_root, tmp_path):
    result = CliRunner().invoke(prepare_command, [str(mixed_root), str(tmp_path / "out"), "--workers", "2"])
    assert result.exit_code == 1
    assert "3 transcoded, 0 already done, 3 failed" in result.output
    assert "FAILED " + str(mixed_root / "bad" / "corrupt.mp4") in result.output
    assert (tmp_path / "out" / "good" / "c.mp4").exists() and not (tmp_path / "out" / "bad" / "corrupt.mp4").exists()


def test_check_videos_lists_bad_files_and_exits_1(mixed_root, tmp_path):
    report = tmp_path / "bad.txt"
    result = CliRunner().invoke(check_videos_command, [str(mixed_root), "--out", str(report), "--workers", "2"])
    assert result.exit_code == 1, result.output
    lines = report.read_text().splitlines()
    bad = dict(line.split("\t", 1) for line in lines)
    assert set(bad) == {str(mixed_root / "bad" / n) for n in ("corrupt.mp4", "empty.mp4", "truncated.avi")}
    assert bad[str(mixed_root / "bad" / "empty.mp4")] == "empty file (0 bytes)"
    assert "Invalid data found" in bad[str(mixed_root / "bad" / "corrupt.mp4")]
    assert "checked 6 videos: 3 bad" in result.output


def test_check_videos_on_a_good_folder(mixed_root, tmp_path):
    good = tmp_path / "good"
    shutil.copytree(mixed_root / "good", good)
    result = CliRunner().invoke(check_videos_command, [str(good), "--workers", "1"])
    assert result.exit_code == 0 and "checked 3 videos: 0 bad" in result.output
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = CliRunner().invoke(check_videos_command, [str(empty)])
    assert result.exit_code == 1 and "no video files" in result.output


def test_check_videos_reads_a_recipe(mixed_root, tmp_path):
    import pytest

    from hcframe.registry import get_registry

    encoders = get_registry().names("encoder")
    if not encoders:
        pytest.skip("no encoder plugin installed: a recipe cannot be validated")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'[data]\nname = "video_folder"\nroot = "{mixed_root}"\n\n[transform]\nname = "video_augment"\n\n'
        f'[model.encoder]\nname = "{encoders[0]}"\n\n[tasks.sup]\nname = "supervised"\nnum_classes = 2\n'
    )
    result = CliRunner().invoke(check_videos_command, [str(recipe), "--workers", "1"])
    assert result.exit_code == 1 and "checked 6 videos: 3 bad" in result.output
    result = CliRunner().invoke(check_videos_command, [str(tmp_path / "bad.toml"), "--workers", "1"])
    assert result.exit_code == 2  # click: the path does not exist
