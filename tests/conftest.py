"""Fixtures: tiny configs, fresh plugin managers, and throwaway plugin distributions."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from rl_training.plugins import DISABLE_AUTOLOAD_ENV, get_plugin_manager
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


class PluginFactory:
    """Writes real distributions (module + ``*.dist-info`` with ``entry_points.txt``)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.modules: list[str] = []
        root.mkdir()
        monkeypatch.syspath_prepend(str(root))

    def install(
        self, dist_name: str, source: str, *, entry_name: str | None = None, version: str = "1.0"
    ) -> str:
        """Install a one-module distribution whose ``rl_training`` entry point is that module."""
        module = f"{dist_name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (self.root / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n"
        )
        (info / "entry_points.txt").write_text(
            f"[rl_training]\n{entry_name or dist_name} = {module}\n"
        )
        importlib.invalidate_caches()
        self.modules.append(module)
        return module


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install throwaway plugin distributions for this test only."""
    factory = PluginFactory(tmp_path / "site", monkeypatch)
    yield factory.install
    for module in factory.modules:
        sys.modules.pop(module, None)


RECORDING_PLUGIN = """
    import rl_training

    class RecordingSink:
        def __init__(self, run_context):
            self.path = run_context.run_dir / "recording.txt"
            self.path.write_text("")

        def log_config(self, config):
            with open(self.path, "a") as f:
                f.write(f"config {sorted(config)}\\n")

        def log_metrics(self, metrics, step):
            with open(self.path, "a") as f:
                f.write(f"metrics {step} {sorted(metrics.items())}\\n")

        def close(self, status="finished"):
            with open(self.path, "a") as f:
                f.write(f"close {status}\\n")

    @rl_training.hookimpl
    def rl_training_log_sinks():
        return {"recording": RecordingSink}
"""
"""A plugin module offering a ``recording`` sink that writes what it gets to a file."""


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` unless torch sees a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
