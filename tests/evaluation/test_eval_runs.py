"""Evaluation stages end to end: `hcframe run` and `hcframe eval --checkpoint`, the feature cache,
repeatability, fine-tuning leaving the pre-trained model alone, splits and their mean."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_toy import TEST_DATA, TRAIN_DATA, toy_raw

import hcframe
from hcframe.cli import cli
from hcframe.data import split_key
from hcframe.engine.trainer import build_model
from hcframe.evaluation import (
    extract_features,
    finetune_metrics,
    load_or_extract_features,
    run_evaluations,
)
from hcframe.eval_tables import FinetuneOptions
from hcframe.recipe import dump_toml, parse_recipe
from hcframe.registry import build_registry
from hcframe.transforms import Normalize

pytestmark = pytest.mark.usefixtures("testkit")

PROBE = {"protocol": "linear_probe", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "max_iter": 50}
RETRIEVAL = {"protocol": "retrieval", "branch": "sup", "train_data": TRAIN_DATA, "test_data": TEST_DATA}


def hcframe_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "hcframe", "--plugin", "hcframe_testkit", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    recipe = root / "toy.toml"
    recipe.write_text(dump_toml(toy_raw(PROBE, RETRIEVAL)))
    result = hcframe_cli("run", str(recipe), "--output", str(root / "run"), cwd=root)
    assert result.returncode == 0, result.stderr
    return root, recipe, root / "run", result


def _brute_force_recall(queries, query_labels, gallery, gallery_labels, k):
    hits = 0
    for q, ql in zip(queries, query_labels):
        sims = [float(np.dot(q, g) / (np.linalg.norm(q) * np.linalg.norm(g))) for g in gallery]
        order = np.argsort(-np.array(sims), kind="stable")[:k]
        hits += any(gallery_labels[j] == ql for j in order)
    return hits / len(queries)


def test_run_writes_eval_results_and_table(trained_run):
    root, _, run_dir, result = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    probe = summary["eval"]["linear_probe/moving_squares/concat"]
    retrieval = summary["eval"]["retrieval/moving_squares/sup"]
    assert probe["num_train"] == 24 and probe["num_test"] == 12 and probe["test_views"] == 1
    assert 0.0 <= probe["top1"] <= probe["top5"] <= 1.0
    assert set(retrieval) == {"R@1", "R@5", "R@10", "R@20", "num_train", "num_test", "test_views"}  # R@50 > 24 videos
    assert "linear_probe/moving_squares/concat" in result.stdout and "R@20" in result.stdout
    # The retrieval numbers equal a float64 brute-force recomputation from the cached features.
    caches = [torch.load(p, weights_only=True) for p in sorted((run_dir / "features").glob("*.pt"))]
    assert len(caches) == 4  # (train, test) x (concat, sup)
    sup = {json.loads(c["description"])["dataset"]["seed"]: c for c in caches if json.loads(c["description"])["branch"] == "sup"}
    train, test = sup[0], sup[1]
    for k in (1, 5, 10, 20):
        expected = _brute_force_recall(
            test["features"].double().mean(1).numpy(), test["labels"].numpy(),
            train["features"].double().mean(1).numpy(), train["labels"].numpy(), k,
        )
        assert retrieval[f"R@{k}"] == pytest.approx(expected)


def cli_in_process(*args):
    """The CLI in this process (no interpreter start-up); the test kit is registered already."""
    return CliRunner().invoke(cli, list(args))


def test_eval_command_repeats_the_numbers_and_reuses_the_cache(trained_run):
    root, recipe, run_dir, _ = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = run_dir / "checkpoints" / "step_00000006.pt"
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "features").glob("*.pt")}
    result = hcframe_cli("eval", str(recipe), "--checkpoint", str(checkpoint), cwd=root)
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["step"] == 6 and report["checkpoint"] == str(checkpoint)
    assert report["eval"] == summary["eval"]  # the final checkpoint holds the final weights
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "features").glob("*.pt")}
    assert after == before and result.stderr.count("from cache") == 4
    assert "linear_probe/moving_squares/concat" in result.stdout
    # A fresh directory extracts the features again and still gives the same numbers.
    fresh = root / "fresh"
    result = cli_in_process("eval", str(recipe), "--checkpoint", str(checkpoint), "--output", str(fresh))
    assert result.exit_code == 0, result.output
    assert len(list((fresh / "features").glob("*.pt"))) == 4
    assert json.loads((fresh / "eval.json").read_text())["eval"] == summary["eval"]


def test_eval_command_errors_are_one_line(trained_run, tmp_path):
    root, recipe, run_dir, _ = trained_run
    missing = cli_in_process("eval", str(recipe), "--checkpoint", str(tmp_path / "nope.pt"))
    assert missing.exit_code == 2 and "nope.pt: checkpoint file not found" in missing.output
    other = tmp_path / "wider.toml"
    raw = toy_raw(PROBE)
    raw["model"]["encoder"]["width"] = 6
    other.write_text(dump_toml(raw))
    mismatch = cli_in_process("eval", str(other), "--checkpoint", str(run_dir / "checkpoints" / "step_00000006.pt"), "--output", str(tmp_path / "o"))
    assert mismatch.exit_code == 2  # refused before any evaluation, like a bad recipe
    lines = [line for line in mismatch.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "step_00000006.pt: weights do not fit the recipe's model" in lines[0]
    assert "of another shape (e.g. trunk.stages.stem.0.weight" in lines[0]
    no_eval = tmp_path / "noeval.toml"
    no_eval.write_text(dump_toml(toy_raw()))
    result = cli_in_process("eval", str(no_eval), "--checkpoint", str(run_dir / "checkpoints" / "step_00000006.pt"))
    assert result.exit_code == 2 and "no [[eval]] tables" in result.output


def _toy_model(raw, seed=0):
    recipe = parse_recipe(raw)
    torch.manual_seed(seed)
    return recipe, build_model(recipe)


def test_same_model_twice_gives_the_same_numbers_and_hits_the_cache(tmp_path):
    multiview = {**PROBE, "protocol": "multiview"}
    recipe, model = _toy_model(toy_raw(PROBE, multiview, RETRIEVAL))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    messages = []
    torch.manual_seed(42)
    rng_before_first = torch.get_rng_state()
    first = run_evaluations(recipe, model, tmp_path, device=torch.device("cpu"), log=messages.append)
    rng_after_first = torch.get_rng_state()
    torch.manual_seed(42)
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").glob("*.pt")}
    assert len(files) == 4 and not any("from cache" in m for m in messages[:2])
    # concat (probe, multi-view) and sup (retrieval) of each dataset come from one pass
    assert sum(m.startswith("extracting features") for m in messages) == 2
    assert sum("from cache" in m for m in messages) == 6  # each evaluation then reads them
    messages.clear()
    torch.randn(100)  # whatever ran in between does not matter
    second = run_evaluations(recipe, model, tmp_path, device=torch.device("cpu"), log=messages.append)
    assert second == first
    assert sum("from cache" in m for m in messages) == 6 and not any("extracting" in m for m in messages)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").glob("*.pt")} == files
    assert model.training  # mode restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng_after_first, rng_before_first)  # the caller's random state is untouched


def test_cache_key_follows_the_weights(tmp_path):
    recipe, model = _toy_model(toy_raw(PROBE))
    model.eval()
    spec = parse_recipe(toy_raw(PROBE)).data
    args = (spec, Normalize(), {"name": "normalize"}, torch.device("cpu"), tmp_path)
    fs1, path1, hit1 = load_or_extract_features(model, "concat", *args)
    fs2, path2, hit2 = load_or_extract_features(model, "concat", *args)
    assert (hit1, hit2) == (False, True) and path1 == path2 and torch.equal(fs1.features, fs2.features)
    with torch.no_grad():
        model.branches["bright"].stages["layer2"][0].bias.add_(1.0)
    _, path3, hit3 = load_or_extract_features(model, "concat", *args)
    assert not hit3 and path3 != path1
    _, path4, hit4 = load_or_extract_features(model, "sup", *args)  # the sup branch did not change
    _, path5, hit5 = load_or_extract_features(model, "sup", *args)
    assert hit5 and path4 == path5 and path4 not in (path1, path3)


class ThreeViewSquares(hcframe.VideoDataset):
    """Test-mode stand-in: every sample has 3 views whatever num_views is set to."""

    def __init__(self, inner):
        self.inner, self.class_names = inner, inner.class_names

    def __len__(self):
        return len(self.inner)

    def video_id(self, i):
        return self.inner.video_id(i)

    def video_path(self, i):
        return self.inner.video_path(i)

    def __getitem__(self, key):
        i, epoch = split_key(key)
        self.inner.num_views = 3
        return self.inner[(i, epoch)]


def test_features_of_every_view_equal_direct_encoding(tmp_path):
    recipe, model = _toy_model(toy_raw(PROBE))
    model.eval()
    dataset = ThreeViewSquares(recipe.data.build())
    dataset.num_views = 1
    fs = extract_features(model, "concat", dataset, Normalize(), torch.device("cpu"), batch_size=5)
    assert fs.features.shape == (16, 3, model.representation_dim("concat")) and fs.num_classes == 4
    sample = dataset[3]
    with torch.no_grad():
        for v in range(3):
            clip = ((sample["views"][v].float() / 255.0) - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
            assert torch.allclose(fs.features[3, v], model.encode(clip[None], "concat")[0], atol=1e-5)
    assert fs.labels.tolist() == [i % 4 for i in range(16)]


def test_finetune_is_deterministic_and_leaves_the_model_alone():
    recipe, model = _toy_model(toy_raw(PROBE))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    train = recipe.data.build()
    test = ThreeViewSquares(parse_recipe(toy_raw()).data.build())
    options = FinetuneOptions(epochs=2, lr=0.05, dropout=0.0)
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        results.append(finetune_metrics(model, "sup", train, test, options, Normalize(), Normalize(), torch.device("cpu"), batch_size=8))
    assert results[0] == results[1]
    assert results[0]["test_views"] == 3 and results[0]["num_test"] == 16
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert np.isfinite(results[0]["train_loss"])


class SplitSquares(hcframe.VideoDataset):
    """Moving squares with a ``split`` argument (1-3) that changes which videos are drawn."""

    def __init__(self, split: int = 1, num_videos: int = 12, test: bool = False) -> None:
        import hcframe_testkit

        self.split = split
        self.inner = hcframe_testkit.MovingSquares(num_videos=num_videos, seed=10 * split + int(test))
        self.class_names = self.inner.class_names

    def __len__(self):
        return len(self.inner)

    def video_id(self, i):
        return self.inner.video_id(i)

    def video_path(self, i):
        return self.inner.video_path(i)

    def __getitem__(self, key):
        self.inner.num_views = self.num_views
        return self.inner[key]


def test_splits_run_each_and_report_the_mean(tmp_path):
    registry = build_registry(explicit=["hcframe_testkit"])
    registry.add("dataset", "split_squares", SplitSquares)
    raw = toy_raw({
        "protocol": "linear_probe", "splits": [1, 2], "max_iter": 30,
        "train_data": {"name": "split_squares"}, "test_data": {"name": "split_squares", "test": True, "num_videos": 8},
    })
    recipe = parse_recipe(raw, registry=registry)
    torch.manual_seed(0)
    model = build_model(recipe, registry)
    results = run_evaluations(recipe, model, tmp_path, device=torch.device("cpu"), log=lambda m: None, registry=registry)
    one, two, mean = (results[f"linear_probe/split_squares/concat/{s}"] for s in ("split1", "split2", "mean"))
    assert mean["splits"] == [1, 2]
    for metric in ("top1", "top5", "train_top1"):
        assert mean[metric] == pytest.approx((one[metric] + two[metric]) / 2)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 4  # each split's own features


class BrightnessCodedSquares(hcframe.VideoDataset):
    """Moving squares whose brightness encodes the class: separable in pixel space, so even a
    random encoder's features separate the classes when labels and features stay aligned."""

    def __init__(self, num_videos: int = 24, seed: int = 0) -> None:
        import hcframe_testkit

        self.inner = hcframe_testkit.MovingSquares(num_videos=num_videos, seed=seed)
        self.class_names = self.inner.class_names

    def __len__(self):
        return len(self.inner)

    def video_id(self, i):
        return self.inner.video_id(i)

    def video_path(self, i):
        return self.inner.video_path(i)

    def __getitem__(self, key):
        self.inner.num_views = self.num_views
        sample = self.inner[key]
        sample["views"] = (sample["views"].float() * (0.25 + 0.25 * int(sample["label"]))).to(torch.uint8)
        return sample


def test_probe_and_retrieval_see_class_structure_of_a_random_encoder(tmp_path):
    registry = build_registry(explicit=["hcframe_testkit"])
    registry.add("dataset", "coded_squares", BrightnessCodedSquares)
    train, test = {"name": "coded_squares"}, {"name": "coded_squares", "num_videos": 12, "seed": 1}
    raw = toy_raw(
        {"protocol": "linear_probe", "train_data": train, "test_data": test, "max_iter": 50},
        {"protocol": "retrieval", "train_data": train, "test_data": test, "ks": [1, 5]},
    )
    recipe = parse_recipe(raw, registry=registry)
    torch.manual_seed(0)
    model = build_model(recipe, registry)
    results = run_evaluations(recipe, model, tmp_path, device=torch.device("cpu"), log=lambda m: None, registry=registry)
    # Chance is 0.25 (4 classes); shuffled labels or misaligned features would land near it.
    assert results["linear_probe/coded_squares/concat"]["top1"] >= 0.75
    assert results["retrieval/coded_squares/concat"]["R@1"] >= 0.5
