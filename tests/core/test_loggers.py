"""Loggers: what TensorBoard, W&B and CSV hold after a run, read back with their own readers;
resumed runs continue the same curves; a missing extra refuses the recipe before any work."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math

import pytest
from click.testing import CliRunner
from PIL import Image

from hcframe.cli import cli
from hcframe.engine.trainer import Trainer
from hcframe.recipe import RecipeError, dump_toml, load_recipe
from hcframe_testkit import CrashAfterMicroBatches, Crashed

pytestmark = [pytest.mark.usefixtures("testkit"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HAS_WANDB = importlib.util.find_spec("wandb") is not None
NO_WANDB = "wandb is not installed (pip install 'hcframe[wandb]' runs this test)"
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
NO_TENSORBOARD = "tensorboard is not installed (pip install 'hcframe[tensorboard]' runs this test)"


def _jsonl(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _parsing_recipe(root, steps=4):
    """The synthetic world (8 tiny videos), the test encoder, parsing distillation from the world's
    ground truth beside the test kit's brightness task, and every core logger."""
    loggers = [{"name": "csv"}]
    if HAS_TENSORBOARD:
        loggers.append({"name": "tensorboard", "image_every": 2})
    if HAS_WANDB:
        loggers.append({"name": "wandb", "image_every": 2})
    raw = {
        "data": {"name": "synthetic_humans", "root": str(root / "world"), "num_train": 8, "num_test": 2, "num_frames": 8, "clip_len": 4, "workers": 1},
        "transform": {"name": "normalize"},
        "model": {"split": "layer2", "encoder": {"name": "tiny3d_test"}},
        "tasks": {
            "parsing": {"name": "parsing_distill", "hidden_dim": 8, "teacher": {"name": "synthetic_ground_truth"}},
            "bright": {"name": "brightness"},
        },
        "train": {"steps": steps, "batch_size": 2, "log_every": 2, "checkpoint_every": 2, "device": "cpu"},
        "combiner": {"grad_cosine_every": 3},
        "loggers": loggers,
    }
    path = root / "parsing.toml"
    path.write_text(dump_toml(raw))
    return load_recipe(path)


@pytest.fixture(scope="module")
def parsing_run(tmp_path_factory, testkit):
    root = tmp_path_factory.mktemp("loggers")
    monkey = pytest.MonkeyPatch()
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkey.setenv(var, str(root / "wandb-home"))
    monkey.delenv("WANDB_MODE", raising=False)
    try:
        Trainer(_parsing_recipe(root), root / "run", log=lambda m: None).train()
    finally:
        monkey.undo()
    return root / "run"


@pytest.mark.skipif(not HAS_TENSORBOARD, reason=NO_TENSORBOARD)
def test_tensorboard_holds_every_logged_number_and_part_map_images(parsing_run):
    lines = _jsonl(parsing_run)
    events = _events(parsing_run / "tensorboard")
    logged = {k for line in lines for k in line} - {"step", "time"}
    assert set(events.Tags()["scalars"]) == logged
    # the losses, the trainer's own numbers and the gradient cosines are all there
    assert {"loss", "parsing/loss", "parsing/distill", "bright/mse", "lr", "clips_per_s", "data_wait_s", "grad_cos/parsing~bright"} <= logged
    for key in logged:
        expected = [(line["step"], line[key]) for line in lines if key in line]
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in expected], key
        for (_, value), (_, want) in zip(got, expected):  # scalars are stored as float32
            assert value == pytest.approx(want, rel=1e-6, abs=1e-6) or (math.isnan(value) and math.isnan(want)), key
        stamped = [(e.wall_time, line["time"]) for e, line in zip(events.Scalars(key), [x for x in lines if key in x]) if "time" in line]
        assert [a for a, _ in stamped] == pytest.approx([b for _, b in stamped]), key  # the line's wall-clock time

    images = events.Images("parsing/part_maps")
    assert [i.step for i in images] == [2, 4]
    picture = Image.open(io.BytesIO(images[-1].encoded_image_string))
    assert picture.format == "PNG" and (picture.width, picture.height) == (images[-1].width, images[-1].height)
    # Three rows (frames, ground truth, student) of two clips of 32 x 32 frames drawn at 3x.
    assert picture.height > 3 * 96 and picture.width > 2 * 96
    assert "recipe/text_summary" in events.Tags()["tensors"]


def test_csv_has_one_row_per_logged_line_with_the_same_numbers(parsing_run):
    lines = _jsonl(parsing_run)
    with open(parsing_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0].keys())
    assert header[:2] == ["step", "epoch"] and "loss" in header and "time" in header
    assert [int(r["step"]) for r in rows] == [line["step"] for line in lines]
    for row, line in zip(rows, lines):
        for key in header:
            if key in line:
                assert float(row[key]) == pytest.approx(line[key]) or math.isnan(line[key]), key
            else:
                assert row[key] == "", key  # e.g. a gradient-cosine line has no loss


@pytest.mark.skipif(not HAS_WANDB, reason=NO_WANDB)
def test_wandb_writes_an_offline_run_with_the_logged_numbers_and_images(parsing_run):
    from wandb_records import history, run_ids

    offline = sorted((parsing_run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    state = json.loads((parsing_run / "wandb" / "hcframe-run.json").read_text())
    files = list(offline[0].glob("run-*.wandb"))
    assert [f.name for f in files] == [f"run-{state['id']}.wandb"] and run_ids(files[0]) == [state["id"]]
    rows = history(files[0])
    lines = _jsonl(parsing_run)
    by_step = {}
    for row in rows:
        by_step.setdefault(row["_step"], {}).update(row)
    assert sorted(by_step) == sorted({line["step"] for line in lines})
    for line in lines:
        for key, value in line.items():
            if key not in ("step", "time"):
                assert by_step[line["step"]][key] == pytest.approx(value), key
    images = [s for s, row in by_step.items() if row.get("parsing/part_maps/_type") == "image-file"]
    assert images == [2, 4]
    for step in images:  # the PNG W&B stored beside the run
        stored = offline[0] / "files" / by_step[step]["parsing/part_maps/path"]
        with Image.open(stored) as picture:
            assert picture.format == "PNG" and picture.size == (by_step[step]["parsing/part_maps/width"], by_step[step]["parsing/part_maps/height"])
    assert state["last_step"] == 4


# --- resuming --------------------------------------------------------------------------------------
def _toy_with_loggers(toy_recipe_file, tmp_path, loggers):
    path = toy_recipe_file(train={"steps": 10, "batch_size": 8, "log_every": 1, "checkpoint_every": 4})
    raw = path.read_text() + "".join(f"\n[[loggers]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in lg.items()) for lg in loggers)
    path.write_text(raw)
    return load_recipe(path)


def _crash_then_resume(recipe, run_dir, crash_after=6):
    with pytest.raises(Crashed):
        Trainer(recipe, run_dir, log=lambda m: None, hooks=[CrashAfterMicroBatches(crash_after)]).train()
    Trainer(recipe, run_dir, resume=True, log=lambda m: None).train()


def test_a_resumed_run_continues_jsonl_csv_and_tensorboard_without_repeating_a_step(toy_recipe_file, tmp_path):
    loggers = [{"name": "csv"}] + ([{"name": "tensorboard"}] if HAS_TENSORBOARD else [])
    recipe = _toy_with_loggers(toy_recipe_file, tmp_path, loggers)
    Trainer(recipe, tmp_path / "straight", log=lambda m: None).train()
    # Crashes in step 7: steps 5 and 6 were logged after the step-4 checkpoint, and are replayed.
    _crash_then_resume(recipe, tmp_path / "resumed")
    straight, resumed = _jsonl(tmp_path / "straight"), _jsonl(tmp_path / "resumed")
    assert [line["step"] for line in resumed] == list(range(1, 11))
    for a, b in zip(straight, resumed):  # the resume is bit for bit: the same losses
        assert a["loss"] == b["loss"] and a["sup/acc"] == b["sup/acc"]
    with open(tmp_path / "resumed" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert [float(r["loss"]) for r in rows] == [line["loss"] for line in resumed]
    if HAS_TENSORBOARD:
        events = _events(tmp_path / "resumed" / "tensorboard")
        assert len(list((tmp_path / "resumed" / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per process
        for key in ("loss", "sup/ce", "lr", "clips_per_s"):
            assert [e.step for e in events.Scalars(key)] == list(range(1, 11)), key
        assert [e.value for e in events.Scalars("loss")] == pytest.approx([line["loss"] for line in resumed], rel=1e-6)


@pytest.mark.skipif(not HAS_WANDB, reason=NO_WANDB)
def test_a_resumed_run_continues_the_same_wandb_run(toy_recipe_file, tmp_path, monkeypatch):
    from wandb_records import history, run_ids

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    recipe = _toy_with_loggers(toy_recipe_file, tmp_path, [{"name": "wandb"}])
    _crash_then_resume(recipe, tmp_path / "run")
    files = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one offline run directory per process, one W&B run id
    assert len({i for f in files for i in run_ids(f)}) == 1
    steps = [row["_step"] for f in files for row in history(f)]
    assert steps == list(range(1, 11)), ([f.parent.name for f in files], [[r["_step"] for r in history(f)] for f in files])  # the second process did not send steps 5 and 6 again


# --- missing extras ----------------------------------------------------------------------------------
def test_a_logger_whose_package_is_missing_is_refused_before_any_work(toy_recipe_file, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    path = toy_recipe_file()
    path.write_text(path.read_text() + '\n[[loggers]]\nname = "csv"\n\n[[loggers]]\nname = "tensorboard"\n')
    message = f"{path}: loggers[1].name: logger 'tensorboard' needs the tensorboard package, which is not installed; install it with: pip install 'hcframe[tensorboard]'"
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert str(error.value) == message
    result = CliRunner().invoke(cli, ["run", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "run").exists()


# --- hcframe show on the same run --------------------------------------------------------------------
def test_show_puts_ground_truth_teacher_and_student_side_by_side(parsing_run, tmp_path):
    from hcframe_video.synthetic.plugin import show_command

    checkpoint = sorted((parsing_run / "checkpoints").glob("step_*.pt"))[-1]
    runner = CliRunner()
    with_student = runner.invoke(show_command, [str(parsing_run / "recipe.toml"), "--out", str(tmp_path / "a.png"), "--clips", "3", "--checkpoint", str(checkpoint)])
    assert with_student.exit_code == 0, with_student.output
    assert with_student.output.strip() == f"wrote {tmp_path / 'a.png'} (3 clips)"
    without = runner.invoke(show_command, [str(parsing_run / "recipe.toml"), "--out", str(tmp_path / "b.png"), "--clips", "3"])
    assert without.exit_code == 0, without.output
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    # Rows of 96-pixel frames: frame, ground truth (the task's teacher here), student; no student without weights.
    assert a.width == b.width and a.height - b.height == 96 + 4
    wrong = runner.invoke(show_command, [str(parsing_run), "--out", str(tmp_path / "c.png"), "--checkpoint", str(checkpoint)])
    assert wrong.exit_code == 2 and "--checkpoint needs a recipe" in wrong.output


def test_the_integrations_are_imported_only_when_used():
    import subprocess
    import sys

    code = (
        "import sys, hcframe, hcframe.cli, hcframe.loggers, hcframe.report, hcframe.ablation, hcframe.engine.trainer, hcframe.run;"
        "from hcframe.registry import get_registry; get_registry();"
        "print(sorted(m for m in ('tensorboard', 'torch.utils.tensorboard', 'wandb', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
