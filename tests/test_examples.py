"""Every recipe in examples/ loads and validates; the ones that need no files build their model."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hcframe.cli import cli
from hcframe.recipe import load_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SYNTHETIC = sorted([*EXAMPLES.glob("*.toml"), *(EXAMPLES / "ablation").glob("*.toml")])
REAL = sorted((EXAMPLES / "real").glob("*.toml"))


def test_the_examples_are_found():
    assert len(SYNTHETIC) >= 7 and len(REAL) >= 3


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_synthetic_recipes_dry_run(path):
    result = CliRunner().invoke(cli, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"{path}: ok" in result.stdout


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_real_data_recipes_validate_and_build_their_encoder(path):
    # Their datasets and teacher checkpoints are not here: validate keys and types, build the encoder.
    recipe = load_recipe(path)
    encoder = recipe.encoder.build()
    assert sum(p.numel() for p in encoder.parameters()) > 7_000_000
    assert recipe.evaluations and {e["protocol"] for e in recipe.evaluations} >= {"finetune", "retrieval"}
