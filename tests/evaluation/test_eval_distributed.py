"""Evaluation under torchrun: two gloo processes share the feature extraction, the fine-tuning (DDP)
and its test, and report what one process reports. One torchrun launch serves every protocol.

The test videos have 3 views each, so the gathered features and test logits are ``[N, 3, ...]``.
Tolerances: linear probe, multi-view and retrieval come from the same features (each video is
encoded in the same batch as in one process, so bit for bit on this CPU) and must be equal to
1e-6. Fine-tuning sums the gradients of two half-batches instead of one batch: its weights differ
by float rounding (measured here: ~1e-7 relative), so its training loss must agree to 1e-5
(relative) and its accuracies exactly (a flipped prediction would need a tie within rounding).
The test kit's encoder has no batch norm and its transform no randomness, and dropout is 0: with
those, one process and two draw nothing differently (see hcframe.evaluation.finetune).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from eval_toy import TEST_DATA, TRAIN_DATA, toy_raw

from hcframe.evaluation.features import batch_shard
from hcframe.recipe import dump_toml, load_recipe
from hcframe.run import run_recipe

pytestmark = pytest.mark.usefixtures("testkit")

TEST_VIEWS = {**TEST_DATA, "test_views": 3}
PROBE = {"protocol": "linear_probe", "train_data": TRAIN_DATA, "test_data": TEST_VIEWS, "max_iter": 200}
# Multi-view and retrieval read the probe's cached features (same branch, data and transform).
MULTIVIEW = {**PROBE, "protocol": "multiview"}
RETRIEVAL = {"protocol": "retrieval", "train_data": TRAIN_DATA, "test_data": TEST_VIEWS}
FINETUNE = {"protocol": "finetune", "branch": "sup", "train_data": TRAIN_DATA, "test_data": TEST_VIEWS, "epochs": 4,
            "optimizer": "adamw", "lr": 0.05, "dropout": 0.0, "batch_size": 6}


def _torchrun(args, cwd, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*prefix, "-m", "hcframe", "--plugin", "hcframe_testkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_batch_shard_deals_out_one_process_batches():
    shards = [batch_shard(11, 3, 2, rank) for rank in (0, 1)]
    assert shards == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10]]  # batches [0-2] [3-5] [6-8] [9-10] in turn
    assert batch_shard(4, 8, 2, 1) == []  # fewer batches than processes: nothing to do


def test_two_processes_evaluate_like_one(tmp_path):
    recipe = tmp_path / "toy.toml"
    recipe.write_text(dump_toml(toy_raw(PROBE, MULTIVIEW, RETRIEVAL, FINETUNE)))
    messages: list[str] = []  # one process: in this one
    one = run_recipe(load_recipe(recipe), tmp_path / "one", log=messages.append)["eval"]
    checkpoint = tmp_path / "one" / "checkpoints" / "step_00000006.pt"
    two = _torchrun(["eval", str(recipe), "--checkpoint", str(checkpoint), "--output", "two"], tmp_path, nproc=2)
    report = json.loads((tmp_path / "two" / "eval.json").read_text())["eval"]

    assert report.keys() == one.keys()
    for key in ("linear_probe/moving_squares/concat", "multiview/moving_squares/concat", "retrieval/moving_squares/concat"):
        assert one[key].keys() == report[key].keys()
        for metric, value in one[key].items():
            assert report[key][metric] == pytest.approx(value, abs=1e-6), (key, metric)
    ft_one, ft_two = one["finetune/moving_squares/sup"], report["finetune/moving_squares/sup"]
    assert ft_two["train_loss"] == pytest.approx(ft_one["train_loss"], rel=1e-5)
    for metric in ("top1", "top5", "clip_top1", "num_train", "num_test", "test_views"):
        assert ft_two[metric] == ft_one[metric], metric
    assert ft_one["test_views"] == one["multiview/moving_squares/concat"]["test_views"] == 3
    # Epoch by epoch the same losses (to the 4 digits logged), and they moved: it trained.
    epochs = [[line for line in lines if line.startswith("finetune epoch")] for lines in (messages, two.stderr.splitlines())]
    assert len(epochs[0]) == 4 and epochs[0] == epochs[1]
    assert len(set(line.split("loss ")[1] for line in epochs[0])) > 1
    # The work was shared: the main process encoded half of each dataset (24 and 12 videos in
    # batches of 8: 16 of 24, 8 of 12); multi-view and retrieval took them from the cache.
    assert "features of MovingSquares: 16 of 24 videos on process 0 of 2" in two.stderr
    assert "features of MovingSquares: 8 of 12 videos on process 0 of 2" in two.stderr
    assert "finetune: lr 0.05 per 16 clips -> 0.01875 at batch size 6 (3 on each of 2 processes)" in two.stderr
    assert two.stderr.count("from cache") == 4
    # The gathered features are the one-process features, bit for bit and in the dataset's order
    # (the feature caches of the two runs: same keys, same tensors, same video order).
    caches = [sorted((tmp_path / run / "features").glob("*.pt")) for run in ("one", "two")]
    assert [p.name for p in caches[0]] == [p.name for p in caches[1]] and len(caches[0]) == 2
    for a, b in zip(*caches):
        a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert a["video_ids"] == b["video_ids"] == sorted(a["video_ids"])
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["labels"], b["labels"])


def test_a_finetune_batch_the_processes_cannot_share_is_refused_before_any_work(tmp_path, monkeypatch):
    # torchrun sets WORLD_SIZE before any process group exists; build_run reads it.
    from hcframe.config import build_run
    from hcframe.tables import RecipeError

    recipe = tmp_path / "toy.toml"
    recipe.write_text(dump_toml(toy_raw(PROBE, {**FINETUNE, "batch_size": 5})))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match=r"eval\[1\]\.batch_size: 5 \(fine-tuning's global batch\) does not divide over the 2 "
                                          r"processes of this run; use a multiple of 2"):
        build_run(load_recipe(recipe), train_data=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    build_run(load_recipe(recipe), train_data=False)  # one process takes any batch
