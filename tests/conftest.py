"""Test-wide setup: the test kit (tests/support) is importable here and in subprocesses, and the
``testkit`` fixture registers it for one test."""

import os
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH", "")]))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def testkit():
    """The test kit (``moving_squares``, ``tiny3d_test``, ``brightness``) registered in this process
    and named in ``HCFRAME_PLUGINS`` for the processes it starts (DataLoader workers, torchrun), as
    ``--plugin hcframe_testkit`` does, for the tests of one module. Afterwards the variable is
    restored and the process-wide registry forgotten, so the next module starts without it.
    Request it with ``pytestmark = pytest.mark.usefixtures("testkit")``."""
    import hcframe
    from hcframe.registry import ENV_PLUGINS, reset_registry

    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV_PLUGINS, os.environ.get(ENV_PLUGINS, ""))  # restored when the block ends
        hcframe.register_plugin("hcframe_testkit")
        yield
    reset_registry()


@pytest.fixture
def single_thread():
    """One intra-op thread for the test: on a shared machine one thread is faster than two fighting
    for two cores. Folders whose tests all want it request it from an autouse fixture."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
