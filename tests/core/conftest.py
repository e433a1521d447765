"""Fixtures for engine tests: a toy recipe built from the test kit."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcframe.recipe import dump_toml, load_recipe

TOY = {
    "data": {"name": "moving_squares", "num_videos": 32},
    "transform": {"name": "normalize"},
    "model": {"split": "layer2", "encoder": {"name": "tiny3d_test"}},
    "tasks": {"sup": {"name": "supervised", "num_classes": 4}, "bright": {"name": "brightness"}},
    "train": {"steps": 10, "batch_size": 8, "log_every": 2, "checkpoint_every": 4},
    "optim": {"lr": 0.05},
}


@pytest.fixture
def toy_recipe_file(tmp_path: Path):
    def write(**tables) -> Path:
        raw = {k: dict(v) for k, v in TOY.items()}
        for key, value in tables.items():
            raw[key] = {**raw.get(key, {}), **value}
        path = tmp_path / "toy.toml"
        path.write_text(dump_toml(raw))
        return path

    return write


@pytest.fixture
def toy_recipe(toy_recipe_file):
    def make(**tables):
        return load_recipe(toy_recipe_file(**tables))

    return make
