"""A tiny synthetic world shared by the synthetic-world tests (built once per session)."""

from __future__ import annotations

import pytest

from hcframe_video.synthetic.generate import WorldSpec, build_world
from hcframe_video.synthetic.world import WorldConfig

TINY_CONFIG = WorldConfig(height=32, width=32, num_frames=10)
TINY_SPEC = WorldSpec(config=TINY_CONFIG, seed=7, num_train=24, num_test=12)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """(root, spec) of a 24 + 12 video world."""
    root = tmp_path_factory.mktemp("synthetic") / "world"
    build_world(root, TINY_SPEC, workers=1)
    return root, TINY_SPEC
