"""``hcframe info`` and ``hcframe run --dry-run`` on the toy recipe."""

from __future__ import annotations

import json

import pytest

from click.testing import CliRunner
from fvcore.nn import FlopCountAnalysis

from hcframe.cli import cli
from hcframe_testkit import TinyEncoder

pytestmark = pytest.mark.usefixtures("testkit")


def test_info_counts_parameters_and_flops_per_clip_and_per_step(toy_recipe_file):
    recipe = toy_recipe_file()
    result = CliRunner().invoke(cli, ["info", str(recipe), "--frames", "4", "--size", "16", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    encoder = TinyEncoder()
    assert info["encoder_parameters"] == sum(p.numel() for p in encoder.parameters())
    import torch

    clip = torch.zeros(1, 3, 4, 16, 16)
    flops = 0
    x = clip
    for stage in encoder.stages.values():
        a = FlopCountAnalysis(stage, x)
        a.unsupported_ops_warnings(False)
        flops += a.total()
        x = stage(x)
    assert abs(info["gflops_per_clip"] * 1e9 - flops) < 1
    # Two views (the brightness task needs two): trunk on both views, branch "layer2" on 1 + 2 views.
    assert info["views_per_step"] == 2
    assert info["gflops_per_step_sample"] > 2 * info["gflops_per_clip"]
    table = CliRunner().invoke(cli, ["info", str(recipe), "--frames", "4", "--size", "16"])
    assert "GFLOPs per clip" in table.stdout and "could not count: none" in table.stdout


def test_dry_run_validates_without_running(toy_recipe_file, tmp_path):
    recipe = toy_recipe_file()
    result = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run"])
    assert result.exit_code == 0 and "ok (2 tasks, split layer2" in result.output
    assert not (tmp_path / "runs").exists()


def test_info_reads_the_clip_shape_the_dataset_declares(toy_recipe_file):
    # moving_squares declares frames x size x size from its arguments; normalize keeps the size.
    recipe = toy_recipe_file(data={"frames": 6, "size": 24})
    declared = CliRunner().invoke(cli, ["info", str(recipe), "--json"])
    explicit = CliRunner().invoke(cli, ["info", str(recipe), "--json", "--frames", "6", "--size", "24"])
    assert declared.exit_code == 0, declared.output
    assert json.loads(declared.stdout)["clip_shape"] == [3, 6, 24, 24]
    assert json.loads(declared.stdout) == json.loads(explicit.stdout)


def test_info_without_a_declared_clip_shape_asks_for_it(toy_recipe_file, monkeypatch):
    from hcframe_testkit import MovingSquares

    monkeypatch.setattr(MovingSquares, "clip_shape", classmethod(lambda cls, **args: None))
    result = CliRunner().invoke(cli, ["info", str(toy_recipe_file())])
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("dataset 'moving_squares' does not declare its clip shape; pass --frames and --size")
