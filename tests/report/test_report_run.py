"""``hcframe report`` on a hand-written run directory."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from PIL import Image

from hcframe.cli import cli
from hcframe.plots import LineSeries, line_chart
from hcframe.report import GROUPS, ReportError, classify_key, eval_markdown, read_metrics, write_report

# Steps 1-4, then a resume from the step-2 checkpoint replays steps 3-4 with other values.
LINES = [
    {"step": 1, "grad_cos/contrastive~parsing": -0.5},
    {"step": 2, "epoch": 0, "lr": 0.1, "loss": 5.0, "contrastive/nce": 4.0, "contrastive/acc": 0.1, "contrastive/loss": 4.0,
     "parsing/kl": 1.0, "parsing/miou": math.nan, "parsing/pixel_acc": 0.3, "parsing/loss": 1.0, "weight/contrastive": 1.0,
     "weight/parsing": 1.0, "grad_cos/contrastive~parsing": -0.25, "clips_per_s": 10.0, "time": 1.0e9},
    {"step": 3, "grad_cos/contrastive~parsing": 0.9},
    {"step": 4, "epoch": 0, "lr": 0.05, "loss": 3.0, "contrastive/nce": 2.5, "contrastive/acc": 0.4, "contrastive/loss": 2.5,
     "parsing/kl": 0.5, "parsing/miou": 0.2, "parsing/pixel_acc": 0.5, "parsing/loss": 0.5, "weight/contrastive": 1.0,
     "weight/parsing": 2.0, "clips_per_s": 12.0, "time": 1.0e9 + 1},
    {"step": 3, "grad_cos/contrastive~parsing": 0.0},
    {"step": 4, "epoch": 0, "lr": 0.05, "loss": 2.0, "contrastive/nce": 1.5, "contrastive/acc": 0.5, "contrastive/loss": 1.5,
     "parsing/kl": 0.5, "parsing/miou": 0.25, "parsing/pixel_acc": 0.6, "parsing/loss": 0.5, "weight/contrastive": 1.0,
     "weight/parsing": 2.0, "contrastive/pos_sim": 0.7, "clips_per_s": 11.0, "time": 1.0e9 + 2},
]
EVAL = {
    "linear_probe/ucf101/concat/split1": {"top1": 0.625, "top5": 0.875, "num_train": 40, "num_test": 16, "bad_videos": []},
    "retrieval/ucf101/contrastive/split1": {"R@1": 0.5, "R@5": 0.8125, "splits": [1]},
    "finetune/hmdb51/concat": {"top1": 0.3333333, "loss": 1.23456789},
}


def write_run(folder, lines=LINES, summary=True, eval_results=EVAL):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")  # NaN is written as the NaN token, as the trainer does
    if summary:
        payload = {"status": "completed", "steps": 4, "wall_time_s": 12.5, "final_metrics": lines[-1], "bad_videos": {"count": 0, "videos": []}}
        if eval_results is not None:
            payload["eval"] = eval_results
        (folder / "summary.json").write_text(json.dumps(payload))
    return folder


def test_read_metrics_merges_lines_and_keeps_the_last_value_of_a_replayed_step(tmp_path):
    series = read_metrics(write_run(tmp_path / "run") / "metrics.jsonl")
    assert series["grad_cos/contrastive~parsing"] == ([1, 2, 3], [-0.5, -0.25, 0.0])
    assert series["loss"] == ([2, 4], [5.0, 2.0])
    assert series["contrastive/pos_sim"] == ([4], [0.7])
    steps, values = series["parsing/miou"]
    assert steps == [2, 4] and math.isnan(values[0]) and values[1] == 0.25
    assert "step" not in series


def test_keys_are_grouped_by_what_they_measure():
    expected = {
        "loss": "losses", "contrastive/nce": "losses", "parsing/kl": "losses", "parsing/loss": "losses", "sup/ce": "losses",
        "lr": "learning_rate", "contrastive/acc": "contrastive_accuracy", "parsing/miou": "parsing_quality",
        "parsing/pixel_acc": "parsing_quality", "grad_cos/a~b": "gradient_cosine", "weight/parsing": "loss_weights",
        "contrastive/pos_sim": "task_metrics", "parsing/valid_fraction": "task_metrics", "clips_per_s": "throughput",
        "time": None, "epoch": None,
    }
    assert {key: classify_key(key) for key in expected} == expected
    assert {g.name for g in GROUPS} >= set(v for v in expected.values() if v)


def test_report_writes_one_png_per_group_with_data_and_the_eval_table(tmp_path):
    run = write_run(tmp_path / "run")
    written = write_report(run)
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["losses.png", "learning_rate.png", "contrastive_accuracy.png", "parsing_quality.png", "gradient_cosine.png",
         "loss_weights.png", "task_metrics.png", "throughput.png", "eval.md"]
    )
    assert all(p.parent == run / "report" for p in written)
    for path in written:
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.format == "PNG" and image.size == (900, 520)

    # The gradient-cosine plot is exactly the chart of the hand-written values (last value per step).
    expected = line_chart(
        [LineSeries("grad_cos/contrastive~parsing", [1, 2, 3], [-0.5, -0.25, 0.0])],
        title=next(g.title for g in GROUPS if g.name == "gradient_cosine"), xlabel="step", ylabel="cosine", integer_x=True,
    )
    with Image.open(run / "report" / "gradient_cosine.png") as image:
        assert image.convert("RGB").tobytes() == expected.image.tobytes()

    text = (run / "report" / "eval.md").read_text()
    assert "| evaluation | top1 (%) | top5 (%) | R@1 (%) | R@5 (%) | loss | num_test | num_train |" in text
    assert "| linear_probe/ucf101/concat/split1 | 62.50 | 87.50 | - | - | - | 16 | 40 |" in text
    assert "| retrieval/ucf101/contrastive/split1 | - | - | 50.00 | 81.25 | - | - | - |" in text
    assert "| finetune/hmdb51/concat | 33.33 | - | - | - | 1.235 | - | - |" in text
    assert "status **completed**, 4 steps, wall time 12.5 s" in text
    assert "![losses](losses.png)" in text


def test_groups_without_data_are_skipped_and_out_dir_is_honoured(tmp_path):
    lines = [{"step": s, "loss": 1.0 / s, "lr": 0.1, "parsing/miou": math.nan} for s in (1, 2, 3)]
    run = write_run(tmp_path / "run", lines, eval_results=None)
    written = write_report(run, tmp_path / "elsewhere")
    assert sorted(p.name for p in written) == ["eval.md", "learning_rate.png", "losses.png"]  # miou is all NaN
    assert "No evaluation results in `summary.json`." in (tmp_path / "elsewhere" / "eval.md").read_text()


def test_a_truncated_last_line_is_ignored_but_a_broken_middle_line_is_an_error(tmp_path):
    run = write_run(tmp_path / "run", LINES[:2], summary=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 2.')
    assert read_metrics(run / "metrics.jsonl")["loss"] == ([2], [5.0])
    assert "No `summary.json`" in (write_report(run)[-1]).read_text()
    with open(run / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"step": 4, "loss": 1.0}) + "\n")
    with pytest.raises(ReportError, match=r"metrics.jsonl:3: not valid JSON"):
        read_metrics(run / "metrics.jsonl")


def test_eval_markdown_rejects_a_non_mapping():
    with pytest.raises(ValueError, match="map result names"):
        eval_markdown({"a": 0.5})


def test_cli_report_writes_files_and_fails_in_one_line_with_code_2(tmp_path):
    run = write_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "out" / "eval.md") in result.stdout.splitlines()
    assert (tmp_path / "out" / "losses.png").is_file()

    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: run directory not found"]

    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(cli, ["report", str(tmp_path / "empty")])
    assert empty.exit_code == 2
    assert len(empty.stderr.strip().splitlines()) == 1 and "no metrics.jsonl" in empty.stderr
