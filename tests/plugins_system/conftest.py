"""Fixtures for the plugin-system tests: invoke the click group in-process with a fresh registry."""

from __future__ import annotations

from typing import Callable

import pytest
from click.testing import CliRunner, Result

from hcframe.registry import reset_registry
from plugin_testing import HCFRAME_ENV


def _forget_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first so that monkeypatch restores the original state even if the code under test
    # (``--plugin``, ``--strict-plugins``) writes these variables itself.
    for var in HCFRAME_ENV:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``invoke(args, **env)``: run ``hcframe ARGS`` in this process with a registry built afresh
    from ``env`` (HCFRAME_* switches); the environment and the registry are restored afterwards."""
    from hcframe.cli import cli

    _forget_switches(monkeypatch)

    def _invoke(args: list[str], **env: str) -> Result:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        reset_registry()
        return CliRunner().invoke(cli, args, catch_exceptions=False)

    yield _invoke
    reset_registry()


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """No HCFRAME_* switches and no process-wide registry, before and after the test."""
    _forget_switches(monkeypatch)
    reset_registry()
    yield
    reset_registry()
