"""``hcframe report`` on a hand-written run directory: what is read, which figures are drawn
(matplotlib Figure objects inspected: panels, curves, smoothing), the files, eval.md."""

from __future__ import annotations

import json
import math
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner
from PIL import Image

from hcframe.cli import cli
from hcframe.metrics import MetricInfo, write_metric_schema
from hcframe.report import ReportError, build_figures, classify_key, eval_markdown, plot_groups, read_metrics, write_report

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'hcframe[report]' runs these tests)")

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
# What the tasks, the combiner and the trainer of this hand-written run declared.
SCHEMA = [
    MetricInfo("loss", "loss", progress=True),
    MetricInfo("lr", "other", plot="learning_rate"),
    MetricInfo("clips_per_s", "other", plot="throughput"),
    MetricInfo("contrastive/loss", "loss"),
    MetricInfo("contrastive/nce", "loss", progress=True),
    MetricInfo("contrastive/acc", "accuracy", progress=True),
    MetricInfo("contrastive/pos_sim", "other", plot="contrastive_similarity"),
    MetricInfo("parsing/loss", "loss"),
    MetricInfo("parsing/kl", "loss"),
    MetricInfo("parsing/miou", "fraction", plot="parsing_quality"),
    MetricInfo("parsing/pixel_acc", "accuracy", plot="parsing_quality"),
    MetricInfo("weight/contrastive", "other", plot="loss_weights"),
    MetricInfo("weight/parsing", "other", plot="loss_weights"),
    MetricInfo("grad_cos/contrastive~parsing", "other", plot="gradient_cosine"),
]
EVAL = {
    "linear_probe/ucf101/concat/split1": {"top1": 0.625, "top5": 0.875, "num_train": 40, "num_test": 16, "bad_videos": []},
    "retrieval/ucf101/contrastive/split1": {"R@1": 0.5, "R@5": 0.8125, "splits": [1]},
    "finetune/hmdb51/concat": {"top1": 0.3333333, "loss": 1.23456789},
}


def write_run(folder, lines=LINES, summary=True, eval_results=EVAL, schema=SCHEMA):
    folder.mkdir(parents=True, exist_ok=True)
    if schema is not None:
        write_metric_schema(folder, schema)
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


def test_keys_are_plotted_where_their_declaration_says():
    schema = {i.name: i for i in SCHEMA + [MetricInfo("sup/acc", "accuracy"), MetricInfo("parsing/valid_fraction", "fraction")]}
    expected = {
        "loss": "losses", "contrastive/nce": "losses", "parsing/kl": "losses", "parsing/loss": "losses",
        "lr": "learning_rate", "contrastive/acc": "accuracy", "sup/acc": "accuracy", "parsing/miou": "parsing_quality",
        "parsing/pixel_acc": "parsing_quality", "grad_cos/a~b": "task_metrics", "weight/parsing": "loss_weights",
        "contrastive/pos_sim": "contrastive_similarity", "parsing/valid_fraction": "fractions", "clips_per_s": "throughput",
        "undeclared/thing": "task_metrics", "time": None, "epoch": None, "step": None,
    }
    assert {key: classify_key(key, schema) for key in expected} == expected
    # The core's plots first, in their fixed order, then the declared ones by first appearance.
    groups = plot_groups(list(expected), schema)
    assert [g.name for g in groups] == [
        "losses", "learning_rate", "accuracy", "fractions", "loss_weights", "task_metrics", "throughput",
        "parsing_quality", "contrastive_similarity",
    ]
    named = {g.name: g for g in groups}
    assert (named["parsing_quality"].title, named["parsing_quality"].ylabel) == ("Parsing quality", "value")  # mixed kinds
    assert named["contrastive_similarity"].title == "Contrastive similarity"


def _lines(axes, kind):
    """The curves of one panel drawn as ``kind`` ("raw" or "smoothed"), by label: (steps, values)."""
    out = {}
    for line in axes.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith(kind + ":"):
            out[gid.split(":", 1)[1]] = (list(line.get_xdata()), list(line.get_ydata()))
    return out


def _tensorboard_smoothing(values, weight):
    """TensorBoard's smoothing written from its definition, in float64: after the n-th finite value
    v_n, sum_i (1 - w) w^(n - i) v_i / (1 - w^n) over the finite values so far."""
    finite, out = [], []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        finite.append(v)
        n = len(finite)
        out.append(sum((1 - weight) * weight ** (n - i) * x for i, x in enumerate(finite, start=1)) / (1 - weight**n))
    return out


def test_figures_have_a_panel_per_task_and_draw_the_logged_values(tmp_path):
    run = write_run(tmp_path / "run")
    series = read_metrics(run / "metrics.jsonl")
    schema = {i.name: i for i in SCHEMA}
    figures = build_figures(series, schema, smoothing=0.6)
    assert list(figures) == [
        "losses", "learning_rate", "accuracy", "gradient_cosine", "loss_weights", "throughput",
        "parsing_quality", "contrastive_similarity",
    ]
    losses = [ax for ax in figures["losses"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in losses] == ["total", "contrastive", "parsing"]
    assert figures["losses"].get_suptitle() == "Losses (total, per task, and loss terms)"
    assert set(_lines(losses[1], "raw")) == {"contrastive/nce", "contrastive/loss"}
    for key in ("contrastive/nce", "contrastive/loss"):  # the logged values, the later line of a replayed step
        assert _lines(losses[1], "raw")[key] == (series[key][0], series[key][1])
        steps, smoothed = _lines(losses[1], "smoothed")[key]
        assert smoothed == pytest.approx(_tensorboard_smoothing(series[key][1], 0.6), rel=1e-12)
    assert all(ax.get_xlabel() == "step" for ax in losses)
    # Accuracies and fractions are drawn in %; NaN (no mIoU yet) is not a point.
    quality = figures["parsing_quality"].axes[0]
    steps, values = _lines(quality, "raw")["parsing/miou"]
    assert steps == [2, 4] and math.isnan(values[0]) and values[1] == pytest.approx(25.0)
    assert quality.get_ylabel() == "value (%)"
    # The learning rate is not smoothed.
    lr = figures["learning_rate"].axes[0]
    assert _lines(lr, "smoothed") == {} and _lines(lr, "raw")["lr"] == ([2, 4], [0.1, 0.05])
    # Smoothing off: only the raw curves.
    plain = build_figures(series, schema, smoothing=0.0)
    assert all(_lines(ax, "smoothed") == {} for fig in plain.values() for ax in fig.axes)


def test_a_loss_panel_spanning_a_factor_of_20_gets_a_log_axis():
    series = {"loss": ([1, 2, 3], [10.0, 1.0, 0.1]), "a/x": ([1, 2, 3], [1.0, 0.9, 0.8])}
    schema = {"loss": MetricInfo("loss", "loss"), "a/x": MetricInfo("a/x", "loss")}
    total, a = build_figures(series, schema)["losses"].axes[:2]
    assert total.get_yscale() == "log" and total.get_ylabel() == "loss (log scale)"
    assert a.get_yscale() == "linear"


def test_report_writes_png_and_svg_per_figure_and_the_eval_table(tmp_path):
    run = write_run(tmp_path / "run")
    written = write_report(run)
    names = [p.name for p in written]
    stems = [
        "losses", "learning_rate", "accuracy", "gradient_cosine", "loss_weights", "throughput",
        "parsing_quality", "contrastive_similarity",  # declared plots by first appearance
    ]
    assert names == [f"{s}.{fmt}" for s in stems for fmt in ("png", "svg")] + ["eval.md"]
    assert all(p.parent == run / "report" for p in written)
    for path in written:
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width >= 640 and image.height >= 300
        elif path.suffix == ".svg":
            root = ElementTree.parse(path).getroot()
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # matplotlib writes each text of an SVG beside its glyphs: the legend names the curve.
    assert "grad_cos/contrastive~parsing" in (run / "report" / "gradient_cosine.svg").read_text()

    text = (run / "report" / "eval.md").read_text()
    assert "| evaluation | top1 (%) | top5 (%) | R@1 (%) | R@5 (%) | loss | num_test | num_train |" in text
    assert "| linear_probe/ucf101/concat/split1 | 62.50 | 87.50 | - | - | - | 16 | 40 |" in text
    assert "| retrieval/ucf101/contrastive/split1 | - | - | 50.00 | 81.25 | - | - | - |" in text
    assert "| finetune/hmdb51/concat | 33.33 | - | - | - | 1.235 | - | - |" in text
    assert "status **completed**, 4 steps, wall time 12.5 s" in text
    assert "![losses](losses.png)" in text
    # Training metrics are shown as their declarations say: accuracies and fractions in %.
    assert "| contrastive/acc | 50.00 % |" in text and "| parsing/miou | 25.00 % |" in text
    assert "| contrastive/pos_sim | 0.7 |" in text and "| parsing/kl | 0.5 |" in text


def test_groups_without_data_are_skipped_and_out_dir_is_honoured(tmp_path):
    lines = [{"step": s, "loss": 1.0 / s, "lr": 0.1, "parsing/miou": math.nan} for s in (1, 2, 3)]
    run = write_run(tmp_path / "run", lines, eval_results=None)
    written = write_report(run, tmp_path / "elsewhere")
    assert sorted(p.name for p in written) == ["eval.md", "learning_rate.png", "learning_rate.svg", "losses.png", "losses.svg"]  # miou is all NaN
    assert "No evaluation results in `summary.json`." in (tmp_path / "elsewhere" / "eval.md").read_text()
    # A folder without metrics_schema.json: nothing says what the keys are, so they share one plot.
    bare = write_run(tmp_path / "bare", LINES, eval_results=None, schema=None)
    assert sorted(p.name for p in write_report(bare)) == ["eval.md", "task_metrics.png", "task_metrics.svg"]


def test_a_trained_run_declares_its_metrics_and_the_report_follows_them(testkit, write_recipe, tmp_path):
    from hcframe.recipe import load_recipe
    from hcframe.run import run_recipe

    recipe = load_recipe(write_recipe("tiny", combiner={"grad_cosine_every": 1}, eval=[]))
    run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    schema = json.loads((tmp_path / "run" / "metrics_schema.json").read_text())["metrics"]
    declared = {m["name"]: (m["kind"], m["progress"], m["plot"]) for m in schema}
    assert declared == {
        "loss": ("loss", True, ""), "lr": ("other", False, "learning_rate"), "clips_per_s": ("other", False, "throughput"),
        "sup/loss": ("loss", False, ""), "sup/ce": ("loss", True, ""), "sup/acc": ("accuracy", True, ""),
        "bright/loss": ("loss", False, ""), "bright/mse": ("loss", True, ""),
        "weight/sup": ("other", False, "loss_weights"), "weight/bright": ("other", False, "loss_weights"),
        "grad_cos/sup~bright": ("other", False, "gradient_cosine"), "data_wait_s": ("other", False, "data_wait"),
    }
    logged = set().union(*(json.loads(line).keys() for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()))
    assert logged - {"step", "epoch", "time"} == set(declared)  # every logged key is declared
    names = [p.name for p in write_report(tmp_path / "run") if p.suffix != ".svg"]
    assert names == [
        "losses.png", "learning_rate.png", "accuracy.png", "gradient_cosine.png", "loss_weights.png", "throughput.png", "data_wait.png", "eval.md",
    ]


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


def test_without_matplotlib_report_and_ablation_refuse_in_one_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    run = write_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: hcframe report draws its figures with matplotlib, which is not installed; install it with: pip install 'hcframe[report]'"
    ]
    assert not (run / "report").exists()
    result = CliRunner().invoke(cli, ["ablation", str(tmp_path / "any.toml"), "--output", str(tmp_path / "ablation")])
    assert result.exit_code == 2 and "pip install 'hcframe[report]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "ablation").exists()


def test_bad_smoothing_is_refused(tmp_path):
    run = write_run(tmp_path / "run")
    result = CliRunner().invoke(cli, ["report", str(run), "--smooth", "1.5"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: smoothing must be in [0, 1) (0: off), got 1.5"]
