"""Constants and helpers of the plugin-system tests (a module of its own, so test files import it
by a unique name rather than ``conftest``, which clashes with the other test folders' conftests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hcframe.registry import ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, ENV_STRICT

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"
EXAMPLES = REPO / "examples"
HCFRAME_ENV = (ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, ENV_STRICT, "HCFRAME_DEBUG")

#: A recipe on the test kit's dataset for the example plugin's task and encoder; 8-frame clips
#: resampled to 2 frames at speeds 1, 2 and 4 (8 = 2 x 4, the shortest clip that works).
SPEED_RECIPE = """\
[data]
name = "moving_squares"
num_videos = 16
frames = 8

[transform]
name = "normalize"

[model]
split = "conv4"
[model.encoder]
name = "c3d_small"
width = 4

[tasks.speed]
name = "playback_speed"
speeds = [1, 2, 4]
frames = 2

[train]
steps = 3
batch_size = 4
log_every = 1
checkpoint_every = 3
device = "cpu"
"""

#: The smallest recipe the core and the test kit can run (used for error cases and explicit plugins).
TOY_RECIPE = """\
[data]
name = "moving_squares"
num_videos = 8

[transform]
name = "normalize"

[model]
split = "layer2"
[model.encoder]
name = "tiny3d_test"

[tasks.sup]
name = "supervised"
num_classes = 4

[train]
steps = 2
batch_size = 4
log_every = 1
checkpoint_every = 2
device = "cpu"
"""


def hcframe_executable() -> str:
    """The ``hcframe`` console script of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("hcframe")
    found = str(beside) if beside.exists() else shutil.which("hcframe")
    if not found:
        pytest.fail("the hcframe console script is not installed: pip install -e .")
    return found


def run_hcframe(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    pythonpath: tuple[Path, ...] = (),
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``hcframe ARGS`` with no inherited HCFRAME_* switches, the test kit importable, and
    ``pythonpath`` in front."""
    child_env = {k: v for k, v in os.environ.items() if k not in HCFRAME_ENV}
    child_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (*pythonpath, SUPPORT))
    child_env.update(env or {})
    return subprocess.run(
        [hcframe_executable(), *args], env=child_env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]
