"""Fixtures for the precision, compile and memory-format tests: the test kit, one thread, and a
small synthetic world for runs of the real trainer (built once per session)."""

from __future__ import annotations

import pytest

import hcframe


@pytest.fixture(scope="module", autouse=True)
def _testkit_here(testkit):
    """Every module here uses the test kit's ``tiny3d_test`` (the top-level ``testkit`` fixture
    registers it for the module and forgets it afterwards)."""
    yield


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here runs on one intra-op thread (tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """Root of a synthetic world of 8 training videos (32x32, 16 frames) with its part maps."""
    root = tmp_path_factory.mktemp("precision") / "world"
    # Built by the dataset itself, with the quickstart's world arguments except the video counts.
    hcframe.get_registry().create("dataset", "synthetic_humans", root=str(root), num_train=8, num_test=1, shortcut_strength=0.25, workers=1)
    return root

