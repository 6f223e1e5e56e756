"""Fixtures: tiny configs, fresh plugin managers, and throwaway plugin distributions.

Shared helpers live in :mod:`rl_training.testing`; this file only makes fixtures of them.
"""

from __future__ import annotations

import signal

import pytest

from rl_training.plugins import DISABLE_AUTOLOAD_ENV, get_plugin_manager
from rl_training.testing import PluginInstaller
from rl_training.testing import tiny_config as _tiny_config


@pytest.fixture(autouse=True)
def _no_ambient_plugins(monkeypatch):
    """Tests see the built-in sinks plus only the plugins they install themselves."""
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)


@pytest.fixture
def tiny_config(tmp_path):
    """A factory of valid tiny configs writing under ``tmp_path / "runs"``."""

    def make(**overrides):
        overrides.setdefault("output_dir", tmp_path / "runs")
        return _tiny_config(**overrides)

    return make


@pytest.fixture
def plugin_manager():
    """A fresh plugin manager (built-ins and installed entry points)."""
    return get_plugin_manager()


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install throwaway plugin distributions for this test only."""
    installer = PluginInstaller(tmp_path / "site", monkeypatch)
    yield installer.install
    installer.uninstall_all()


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` unless torch sees a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _stop_signals_restored():
    """A test that runs the CLI in this process (which ignores SIGINT and SIGTERM as it
    ends) must not leave them ignored: the next test's subprocesses would inherit that."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
