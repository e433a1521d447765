"""Evaluation tests register the test kit once per session."""

import pytest

import hcframe


@pytest.fixture(autouse=True, scope="session")
def _testkit():
    hcframe.register_plugin("hcframe_testkit")
