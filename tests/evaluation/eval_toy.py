"""Shared toy recipe for the evaluation tests (test-kit components, tiny and fast); imported by its
unique name, not as ``conftest``, which clashes with the other test folders' conftests."""

import copy

TOY_RECIPE = {
    "data": {"name": "moving_squares", "num_videos": 16},
    "transform": {"name": "normalize"},
    "model": {"split": "layer2", "encoder": {"name": "tiny3d_test", "width": 4}},
    "tasks": {"sup": {"name": "supervised", "num_classes": 4}, "bright": {"name": "brightness"}},
    "train": {"steps": 6, "batch_size": 8, "log_every": 3, "checkpoint_every": 6, "device": "cpu"},
    "optim": {"lr": 0.05},
}
TRAIN_DATA = {"name": "moving_squares", "num_videos": 24, "seed": 0}
TEST_DATA = {"name": "moving_squares", "num_videos": 12, "seed": 1}


def toy_raw(*evals):
    raw = copy.deepcopy(TOY_RECIPE)
    raw["eval"] = [copy.deepcopy(e) for e in evals]
    return raw
