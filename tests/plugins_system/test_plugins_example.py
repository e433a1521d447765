"""The installed example plugin (examples/speed_plugin, distribution hcframe-speed-example):
listed with its provider, used by a recipe through the CLI, and its components checked against
independent references."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import math
import tomllib

import pytest
import torch

from plugin_testing import SPEED_RECIPE


def _require_example_installed() -> None:
    try:
        metadata.distribution("hcframe-speed-example")
    except metadata.PackageNotFoundError:
        pytest.fail("the example plugin is not installed: pip install -e examples/speed_plugin")


def test_plugins_json_lists_backbones_and_example_with_providers(invoke):
    _require_example_installed()
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr
    records = json.loads(result.stdout)
    providers = {(r["kind"], r["name"]): r["provider"] for r in records}
    assert providers[("task", "playback_speed")] == "hcframe-speed-example"
    assert providers[("encoder", "c3d_small")] == "hcframe-speed-example"
    assert providers[("hook", "stop_when_learned")] == "hcframe-speed-example"
    for backbone in ("r3d_18", "r2plus1d_18", "s3d"):
        assert providers[("encoder", backbone)] == "hcframe-backbones"
    assert providers[("transform", "normalize")] == "hcframe"
    example = next(r for r in records if r["name"] == "playback_speed")
    assert example["version"] == metadata.version("hcframe-speed-example")
    assert example["summary"].startswith("Classify the playback speed")
    # Every record appears once.
    assert len(providers) == len(records)


def test_recipe_with_example_task_and_encoder_runs_through_cli(invoke, tmp_path):
    _require_example_installed()
    recipe = tmp_path / "speed.toml"
    recipe.write_text(SPEED_RECIPE)
    run_dir = tmp_path / "run"
    result = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["steps"] == 3
    final = summary["final_metrics"]
    assert math.isfinite(final["speed/ce"]) and final["speed/ce"] > 0
    assert final["speed/chance"] == pytest.approx(1 / 3)
    assert 0.0 <= final["speed/acc"] <= 1.0
    saved = tomllib.loads((run_dir / "recipe.toml").read_text())
    assert saved["model"]["encoder"]["name"] == "c3d_small"
    assert saved["tasks"]["speed"] == {"name": "playback_speed", "speeds": [1, 2, 4], "frames": 2, "random_start": True, "dropout": 0.0}


def test_plugins_table_of_kind_hook_shows_the_example_hook(invoke):
    _require_example_installed()
    result = invoke(["plugins", "--kind", "hook"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "stop_when_learned" in line)
    assert "│ hook │ stop_when_learned │ hcframe-speed-exam" in row and "Stop training once" in row  # folded to the width
    records = json.loads(invoke(["plugins", "--kind", "hook", "--json"]).stdout)
    assert [(r["name"], r["provider"]) for r in records] == [("stop_when_learned", "hcframe-speed-example")]


STOP_HOOK = """
[[hooks]]
name = "stop_when_learned"
metric = "speed/ce"
mode = "min"
target = 1e9
patience = 2
"""


def test_recipe_hook_from_the_example_stops_the_run_cleanly_and_a_resume_keeps_counting(invoke, tmp_path):
    _require_example_installed()
    recipe = tmp_path / "speed.toml"
    # Any cross-entropy is below 1e9: every log line reaches the target, the second in a row stops.
    recipe.write_text(SPEED_RECIPE.replace("steps = 3", "steps = 6") + STOP_HOOK)
    run_dir = tmp_path / "run"
    result = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["stopped_early"]["step"] == 2 and "speed/ce" in summary["stopped_early"]["reason"]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002.pt"]  # the stop is checkpointed (checkpoint_every is 3)
    from hcframe.engine.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoints" / checkpoints[0])["hooks"]["StopWhenLearned"] == {"streak": 2}
    saved = tomllib.loads((run_dir / "recipe.toml").read_text())
    assert saved["hooks"] == [{"name": "stop_when_learned", "metric": "speed/ce", "target": 1e9, "patience": 2, "mode": "min"}]
    # The task's declarations reached the run directory: the report draws chance beside acc.
    schema = {m["name"]: m for m in json.loads((run_dir / "metrics_schema.json").read_text())["metrics"]}
    assert schema["speed/chance"]["plot"] == "accuracy" and schema["speed/acc"]["kind"] == "accuracy"

    # Resumed, the count goes on from 2: the next log line stops it again at once.
    resumed = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(run_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def test_stop_when_learned_refuses_a_metric_the_run_does_not_log(invoke, tmp_path):
    _require_example_installed()
    recipe = tmp_path / "speed.toml"
    recipe.write_text(SPEED_RECIPE + STOP_HOOK.replace("speed/ce", "speed/top5"))
    result = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert "stop_when_learned: the run logs no 'speed/top5'; it logs loss, lr" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_recipe_with_clips_too_short_for_the_speeds_fails_with_one_line(invoke, tmp_path):
    _require_example_installed()
    recipe = tmp_path / "speed.toml"
    recipe.write_text(SPEED_RECIPE)
    result = invoke(["--plugin", "hcframe_testkit", "run", str(recipe), "-o", str(tmp_path / "r"), "--set", "data.frames=7"])
    assert result.exit_code == 1
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert "playback_speed: clips have 7 frames" in line and "need 8" in line and "data.clip_len" in line


# --- the components themselves --------------------------------------------------------------------
def test_resample_at_speeds_takes_every_s_th_frame_within_the_clip():
    from hcframe_speed import resample_at_speeds

    length, frames = 12, 3
    speeds = torch.tensor([1, 2, 4, 1, 2, 4] * 20)
    # Frame t of every clip holds the value t (all channels and pixels), so the output says
    # exactly which source frames were taken.
    clips = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1, 1).expand(len(speeds), 2, length, 3, 3).contiguous()
    out = resample_at_speeds(clips, speeds, frames, generator=torch.Generator().manual_seed(0))
    assert out.shape == (len(speeds), 2, frames, 3, 3)
    starts_seen: dict[int, set[int]] = {1: set(), 2: set(), 4: set()}
    for b, s in enumerate(speeds.tolist()):
        taken = out[b, 0, :, 0, 0].tolist()
        start = int(taken[0])
        assert taken == [float(start + s * k) for k in range(frames)]
        assert 0 <= start <= length - s * frames
        assert (out[b] == out[b, 0, :, 0, 0].view(1, frames, 1, 1)).all()
        starts_seen[s].add(start)
    # 40 draws per speed cover every allowed start (10, 7 and 1 of them).
    assert starts_seen == {s: set(range(length - s * frames + 1)) for s in (1, 2, 4)}

    fixed = resample_at_speeds(clips[:3], speeds[:3], frames, random_start=False)
    assert fixed[:, 0, :, 0, 0].tolist() == [[0, 1, 2], [0, 2, 4], [0, 4, 8]]
    with pytest.raises(ValueError, match="fewer than frames x speed = 16"):
        resample_at_speeds(clips[:1], torch.tensor([4]), 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"speeds": [1, 1, 2]}, "distinct"),
        ({"speeds": [2]}, "at least two"),
        ({"speeds": [0, 1]}, "integers >= 1"),
        ({"frames": 0}, "frames must be"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_playback_speed_rejects_bad_arguments(kwargs, message):
    from hcframe_speed import PlaybackSpeedPrediction

    with pytest.raises(ValueError, match=message):
        PlaybackSpeedPrediction(**kwargs)


def test_playback_speed_trains_trunk_branch_and_head_through_the_task_encoder():
    from hcframe.engine.model import MultiTaskModel
    from hcframe_speed import C3DSmall, PlaybackSpeedPrediction

    torch.manual_seed(0)
    task = PlaybackSpeedPrediction(speeds=[1, 3], frames=2)
    assert task.min_clip_len == 6
    model = MultiTaskModel(C3DSmall(width=2, num_stages=3), {"speed": task}, split="conv3")
    batch = {"views": [torch.randn(4, 3, 6, 16, 16)]}
    total, outputs, _ = model(batch)
    total.backward()
    assert set(outputs["speed"].losses) == {"ce"}
    declared = {i.name: i.kind for i in task.metric_info()}
    assert declared == {"ce": "loss", "acc": "accuracy", "chance": "fraction"}
    assert set(declared) == set(outputs["speed"].losses) | set(outputs["speed"].metrics)
    # The loss depends on the shared trunk and on the task's own branch (the resampled clip went
    # through inp.encoder), and on the head.
    for part in (model.trunk, model.branches["speed"], task.head):
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert task.head[1].out_features == 2
    with pytest.raises(ValueError, match="clips have 5 frames but frames=2 at speeds up to 3 need 6"):
        model({"views": [torch.randn(2, 3, 5, 16, 16)]})


def _conv_params(cin: int, cout: int, batch_norm: bool) -> int:
    return cin * cout * 27 + (2 * cout if batch_norm else cout)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_c3d_small_stages_shapes_and_parameter_count(batch_norm):
    from hcframe_speed import C3DSmall

    width = 4
    encoder = C3DSmall(width=width, batch_norm=batch_norm)
    assert encoder.stage_names() == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert encoder.feature_dim == 8 * width
    c = [width, 2 * width, 4 * width, 8 * width, 8 * width]
    expected = (
        _conv_params(3, c[0], batch_norm)
        + _conv_params(c[0], c[1], batch_norm)
        + _conv_params(c[1], c[2], batch_norm) + _conv_params(c[2], c[2], batch_norm)
        + _conv_params(c[2], c[3], batch_norm) + _conv_params(c[3], c[3], batch_norm)
        + _conv_params(c[3], c[4], batch_norm) + _conv_params(c[4], c[4], batch_norm)
    )
    assert sum(p.numel() for p in encoder.parameters()) == expected
    out = encoder(torch.randn(2, 3, 16, 32, 32))
    # pool1 halves only space; pools 2-4 halve time and space; conv5 is not pooled.
    assert out.feature_map.shape == (2, 8 * width, 2, 2, 2)
    assert torch.allclose(out.pooled, out.feature_map.mean(dim=(2, 3, 4)))
    shapes = []
    x = torch.randn(1, 3, 16, 32, 32)
    for name in encoder.stage_names():
        x = encoder.stages[name](x)
        shapes.append(tuple(x.shape[2:]))
    assert shapes == [(16, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2), (2, 2, 2)]


def test_c3d_small_shallow_and_tiny_inputs():
    from hcframe_speed import C3DSmall

    encoder = C3DSmall(width=2, num_stages=3)
    assert encoder.stage_names() == ["conv1", "conv2", "conv3"] and encoder.feature_dim == 8
    # A 2-frame 8-pixel clip: ceil-mode pooling keeps every dimension at least 1.
    assert encoder(torch.randn(1, 3, 2, 8, 8)).feature_map.shape == (1, 8, 1, 2, 2)
    for bad in ({"width": 0}, {"num_stages": 6}, {"num_stages": 0}):
        with pytest.raises(ValueError, match="c3d_small: "):
            C3DSmall(**bad)


def test_example_plugin_adds_its_command_through_the_hook(fresh_registry):
    import click
    from click.testing import CliRunner

    from hcframe.registry import build_registry
    from hcframe_speed import C3DSmall

    _require_example_installed()
    group = click.Group()
    errors = []
    build_registry(autoload=True).add_commands(group, on_error=lambda provider, exc: errors.append(provider))
    assert "c3d-stages" in group.commands
    result = CliRunner().invoke(group, ["c3d-stages", "--width", "2", "--frames", "8", "--size", "16", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["stage"] for r in rows] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [r["output"] for r in rows] == [[2, 8, 8, 8], [4, 4, 4, 4], [8, 2, 2, 2], [16, 1, 1, 1], [16, 1, 1, 1]]
    assert sum(r["parameters"] for r in rows) == sum(p.numel() for p in C3DSmall(width=2).parameters())
    bad = CliRunner().invoke(group, ["c3d-stages", "--num-stages", "7"])
    assert bad.exit_code == 2 and "c3d_small: num_stages must be between 1 and 5, got 7" in bad.output
