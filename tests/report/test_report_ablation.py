"""``hcframe ablation``: aggregation math, metric selection, resuming, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from click.testing import CliRunner
from PIL import Image

from hcframe.ablation import AblationError, aggregate, mean_std, parse_seeds, run_ablation, run_metrics, select_metrics
from hcframe.cli import cli

pytestmark = pytest.mark.usefixtures("testkit")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'hcframe[report]' runs these tests)")


def test_mean_and_sample_std_match_the_statistics_module():
    values = [0.5, 0.625, 0.8125]
    stat = mean_std(values)
    assert stat.n == 3
    assert stat.mean == pytest.approx(statistics.fmean(values), abs=1e-15)
    assert stat.std == pytest.approx(statistics.stdev(values), abs=1e-15)  # n - 1 denominator
    assert stat.std != pytest.approx(statistics.pstdev(values))
    one = mean_std([0.25])
    assert one.mean == 0.25 and math.isnan(one.std) and one.n == 1
    none = mean_std([])
    assert none.n == 0 and math.isnan(none.mean)


def test_aggregate_leaves_out_runs_without_the_metric_or_with_nan():
    runs = {"a": [{"m": 1.0, "k": 2.0}, {"m": 3.0}, {"m": math.nan, "k": 4.0}]}
    stats = aggregate(runs, ["m", "k"])
    assert stats["a"]["m"].n == 2 and stats["a"]["m"].mean == 2.0 and stats["a"]["m"].std == pytest.approx(math.sqrt(2))
    assert stats["a"]["k"].n == 2 and stats["a"]["k"].mean == 3.0


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 7 ") == [7]
    for bad, message in (("a,b", "comma-separated integers"), ("", "at least one seed"), ("1,1", "repeated")):
        with pytest.raises(AblationError, match=message):
            parse_seeds(bad)


def test_metric_selection_by_name_glob_and_bare_metric():
    names = ["linear_probe/x/concat/top1", "linear_probe/x/concat/train_top1", "retrieval/x/a/R@1", "retrieval/x/b/R@1", "retrieval/x/a/R@5"]
    assert select_metrics(names, []) == names
    assert select_metrics(names, ["top1"]) == ["linear_probe/x/concat/top1"]
    assert select_metrics(names, ["retrieval/*/R@1", "linear_probe/x/concat/top1"]) == ["linear_probe/x/concat/top1", "retrieval/x/a/R@1", "retrieval/x/b/R@1"]
    with pytest.raises(AblationError, match="--metric 'top9' matches no result; available: linear_probe/x/concat/top1"):
        select_metrics(names, ["top9"])


def test_run_metrics_takes_float_eval_results_and_falls_back_to_final_metrics():
    summary = {"eval": {"lp/d/concat": {"top1": 0.5, "num_test": 8, "splits": [1]}, "ret/d/a": {"R@1": 0.25}}, "final_metrics": {"loss": 1.0}}
    assert run_metrics(summary) == {"lp/d/concat/top1": 0.5, "ret/d/a/R@1": 0.25}
    fallback = {"final_metrics": {"step": 4, "lr": 0.01, "loss": 1.5, "sup/acc": 0.75, "clips_per_s": 3.0, "time": 9.0}}
    assert run_metrics(fallback) == {"final/loss": 1.5, "final/sup/acc": 0.75}


def _completed(folder, eval_results=None, final=None):
    folder.mkdir(parents=True)
    summary = {"status": "completed", "steps": 2, "final_metrics": final or {}, "wall_time_s": 1.0}
    if eval_results is not None:
        summary["eval"] = eval_results
    (folder / "summary.json").write_text(json.dumps(summary))


def test_aggregation_of_finished_runs_without_training(write_recipe, tmp_path):
    """Every run has a completed summary: nothing trains, the outputs hold the aggregates."""
    a, b = write_recipe("arm_a"), write_recipe("arm_b")
    out = tmp_path / "out"
    top1 = {"arm_a": [0.5, 0.625, 0.75], "arm_b": [0.25, 0.375, 0.0]}
    r1 = {"arm_a": [0.125, 0.25, None], "arm_b": [0.5, 0.5, 0.5]}
    for name in top1:
        for seed in range(3):
            results = {"linear_probe/d/concat": {"top1": top1[name][seed], "num_test": 8}}
            if r1[name][seed] is not None:
                results["retrieval/d/concat"] = {"R@1": r1[name][seed]}
            _completed(out / name / f"seed{seed}", results)
    logged = []
    result = run_ablation([a, b], [0, 1, 2], out, log=logged.append)
    assert [r.status for r in result.runs] == ["skipped"] * 6
    assert sum("completed earlier, skipped" in line for line in logged) == 6
    assert not any((out / n / f"seed{s}" / "metrics.jsonl").exists() for n in top1 for s in range(3))
    assert result.metrics == ["linear_probe/d/concat/top1", "retrieval/d/concat/R@1"]

    from hcframe.ablation import write_ablation_outputs

    paths = write_ablation_outputs(result, out, log=logged.append)
    assert [p.name for p in paths] == ["ablation.json", "ablation.md", "ablation.png", "ablation.svg"]
    payload = json.loads((out / "ablation.json").read_text())
    for name, values in top1.items():
        agg = payload["recipes"][name]["aggregate"]["linear_probe/d/concat/top1"]
        assert agg["mean"] == pytest.approx(statistics.fmean(values)) and agg["std"] == pytest.approx(statistics.stdev(values)) and agg["n"] == 3
    partial = payload["recipes"]["arm_a"]["aggregate"]["retrieval/d/concat/R@1"]
    assert partial == {"mean": pytest.approx(0.1875), "std": pytest.approx(statistics.stdev([0.125, 0.25])), "n": 2}
    assert payload["recipes"]["arm_b"]["aggregate"]["retrieval/d/concat/R@1"]["std"] == 0.0
    assert "n - 1" in payload["std"]

    markdown = (out / "ablation.md").read_text()
    sd = 100 * statistics.stdev(top1["arm_a"])
    assert f"| linear_probe/d/concat/top1 (%) | 62.50 ± {sd:.2f} | 20.83 ± {100 * statistics.stdev(top1['arm_b']):.2f} |" in markdown
    assert f"| retrieval/d/concat/R@1 (%) | 18.75 ± {100 * statistics.stdev([0.125, 0.25]):.2f} (n=2) | 50.00 ± 0.00 |" in markdown
    with Image.open(out / "ablation.png") as image:
        assert image.format == "PNG" and image.size[0] >= 640
    # The chart: one bar per recipe and metric at the mean (in %), an error bar of one std.
    from hcframe.ablation import ablation_chart

    axes = ablation_chart(result).axes[0]
    for name in top1:
        bars = next(c for c in axes.containers if c.get_label() == name)
        heights = [patch.get_height() for patch in bars.patches]
        r1_values = [v for v in r1[name] if v is not None]
        assert heights == pytest.approx([100 * statistics.fmean(top1[name]), 100 * statistics.fmean(r1_values)])
        caps = bars.errorbar.lines[2][0].get_segments()  # the vertical error segments, one per bar
        assert [seg[1][1] - seg[0][1] for seg in caps] == pytest.approx(
            [200 * statistics.stdev(top1[name]), 200 * statistics.stdev(r1_values)]
        )
    assert [t.get_text() for t in axes.get_xticklabels()] == result.metrics

    only = run_ablation([a, b], [0, 1, 2], out, metrics=["R@1"], log=logged.append)
    assert only.metrics == ["retrieval/d/concat/R@1"]


def test_collect_aggregates_completed_runs_and_runs_nothing(write_recipe, tmp_path):
    """--collect: the completed runs are aggregated, the missing ones are listed as not run and
    nothing is started (no run directory appears for them)."""
    a = write_recipe("arm_a")
    out = tmp_path / "out"
    for seed, top1 in ((0, 0.5), (2, 0.75)):
        _completed(out / "arm_a" / f"seed{seed}", {"linear_probe/d/concat": {"top1": top1}})
    runner = CliRunner()
    result = runner.invoke(cli, ["ablation", str(a), "--seeds", "0,1,2", "--output", str(out), "--collect"])
    assert result.exit_code == 0, result.output
    assert not (out / "arm_a" / "seed1").exists()
    payload = json.loads((out / "ablation.json").read_text())
    runs = payload["recipes"]["arm_a"]["runs"]
    assert [r["status"] for r in runs] == ["skipped", "not run", "skipped"]
    agg = payload["recipes"]["arm_a"]["aggregate"]["linear_probe/d/concat/top1"]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(0.625) and agg["std"] == pytest.approx(statistics.stdev([0.5, 0.75]))
    assert "Not run (1 of 3; left out of the aggregates):\n\n- arm_a seed 1\n" in (out / "ablation.md").read_text()


def test_runs_without_eval_are_compared_on_their_final_training_metrics(write_recipe, tmp_path):
    recipe = write_recipe("plain")
    out = tmp_path / "out"
    for seed, loss in ((0, 1.0), (1, 2.0)):
        _completed(out / "plain" / f"seed{seed}", None, {"step": 2, "loss": loss, "lr": 0.1})
    result = run_ablation([recipe], [0, 1], out, log=lambda m: None)
    assert result.metrics == ["final/loss"]
    assert result.stats["plain"]["final/loss"].mean == 1.5


def test_bad_arguments_fail_before_any_run(write_recipe, tmp_path):
    a = write_recipe("arm")
    other = tmp_path / "other"
    other.mkdir()
    (other / "arm.toml").write_text(a.read_text())
    runner = CliRunner()
    for args, message in (
        ([str(a), str(other / "arm.toml")], "named 'arm' like"),
        ([str(a), "--set", "train.seed=3"], "--set train.seed"),
        ([str(a), "--seeds", "x"], "--seeds 'x'"),
        ([str(tmp_path / "missing.toml")], "recipe file not found"),
    ):
        result = runner.invoke(cli, ["ablation", *args, "--output", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_end_to_end_two_recipes_two_seeds_then_resume(write_recipe, tmp_path):
    shared = write_recipe("shared", model={"split": "none"})
    branches = write_recipe("branches")
    out = tmp_path / "ablation"
    runner = CliRunner()
    args = ["ablation", "--seeds", "0,1", "--output", str(out), "--set", "optim.lr=0.02"]

    first = runner.invoke(cli, [*args, str(shared), str(branches)])
    assert first.exit_code == 0, first.output
    for name in ("shared", "branches"):
        for seed in (0, 1):
            run_dir = out / name / f"seed{seed}"
            assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
            resolved = (run_dir / "recipe.toml").read_text()
            assert f"seed = {seed}" in resolved and "lr = 0.02" in resolved
    assert "[4/4] branches seed 1: running" in first.stderr
    assert "linear_probe/moving_squares/concat/top1" in first.stdout and "shared" in first.stdout
    payload = json.loads((out / "ablation.json").read_text())
    assert payload["metrics"][0] == "linear_probe/moving_squares/concat/top1"
    for name in ("shared", "branches"):
        values = [r["metrics"]["linear_probe/moving_squares/concat/top1"] for r in payload["recipes"][name]["runs"]]
        agg = payload["recipes"][name]["aggregate"]["linear_probe/moving_squares/concat/top1"]
        assert agg["mean"] == pytest.approx(statistics.fmean(values)) and agg["std"] == pytest.approx(statistics.stdev(values))
    assert (out / "ablation.png").is_file() and (out / "ablation.svg").is_file() and (out / "ablation.md").is_file()

    # Second invocation: finished runs are skipped; a run that lost its summary resumes from its
    # checkpoint; a recipe that cannot run fails alone (exit 1) and the others are still reported.
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")}
    (out / "shared" / "seed1" / "summary.json").unlink()
    broken = write_recipe("broken", train={"batch_size": 32})  # more than the 16 videos
    second = runner.invoke(cli, [*args, str(shared), str(branches), str(broken)])
    assert second.exit_code == 1, second.output
    assert second.stderr.count("completed earlier, skipped") == 3
    assert "[2/6] shared seed 1: resuming" in second.stderr
    # The recipe is refused by hcframe.config.build_run when its run sets up: a RecipeError naming the key.
    assert second.stderr.strip().splitlines()[-1].startswith("error: 2 of 6 runs failed: broken seed 0: RecipeError: ")
    assert "train.batch_size: 32 is more than dataset 'moving_squares' holds (16 videos)" in second.stderr
    for path, mtime in kept.items():
        if path.parent.name != "seed1" or path.parent.parent.name != "shared":
            assert path.stat().st_mtime_ns == mtime
    assert json.loads((out / "shared" / "seed1" / "summary.json").read_text())["status"] == "completed"
    markdown = (out / "ablation.md").read_text()
    assert "| metric | shared | branches | broken |" in markdown
    assert "| linear_probe/moving_squares/concat/top1 (%) |" in markdown
    assert all(line.endswith("| - |") for line in markdown.splitlines() if line.startswith("| linear_probe"))
    assert "- broken seed 1: RecipeError" in markdown
