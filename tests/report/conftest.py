"""Fixtures for the report, plotting and ablation tests: a tiny recipe built from the test kit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from hcframe.recipe import dump_toml

# Trains in well under a second per run on 2 CPU cores; one linear-probe evaluation.
TINY_RECIPE = {
    "data": {"name": "moving_squares", "num_videos": 16},
    "transform": {"name": "normalize"},
    "model": {"split": "layer2", "encoder": {"name": "tiny3d_test", "width": 4}},
    "tasks": {"sup": {"name": "supervised", "num_classes": 4}, "bright": {"name": "brightness"}},
    "train": {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2, "device": "cpu"},
    "optim": {"lr": 0.05},
    "eval": [
        {
            "protocol": "linear_probe",
            "max_iter": 5,
            "train_data": {"name": "moving_squares", "num_videos": 8, "seed": 0},
            "test_data": {"name": "moving_squares", "num_videos": 8, "seed": 1},
        }
    ],
}


@pytest.fixture
def write_recipe(tmp_path: Path):
    """``write_recipe(name, **table_updates)`` -> path of a tiny recipe file ``<name>.toml``."""

    def write(name: str, **tables) -> Path:
        raw = copy.deepcopy(TINY_RECIPE)
        for key, value in tables.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        folder = tmp_path / "recipes"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.toml"
        path.write_text(dump_toml(raw))
        return path

    return write
