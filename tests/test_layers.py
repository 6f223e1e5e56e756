"""The package's layers: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rl_training

PACKAGE = Path(rl_training.__file__).parent

LAYERS = (
    ("errors", "hyperparams", "presets", "registry", "config"),  # what a run is
    ("runtime",),  # where it runs: files, devices, processes, signals, seeds
    ("experiment", "hookspecs", "plugins"),  # logging, sinks, run setup
    ("trainers",),  # the algorithms and the run lifecycle
    ("cli", "report", "testing", "__init__", "__main__"),  # what users call
)
"""Top-level modules and packages of ``rl_training``, lowest layer first."""

SHIMS = {"runtime.run_utils": "experiment.run"}
"""Modules kept at an import path the contract names, re-exporting a higher layer."""


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for number, names in enumerate(LAYERS):
        if top in names:
            return number
    raise AssertionError(f"rl_training.{module} is in no layer of tests/test_layers.py")


MODULES = sorted(
    str(path.relative_to(PACKAGE).with_suffix("")).replace("/", ".").removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
)
"""Every module of the package, ``"experiment.logging"``, ``"trainers"``..."""


def _module(name: str) -> str | None:
    """``"rl_training.a.b"`` as a key of :data:`MODULES` (``None``: not a module of ours)."""
    if name == "rl_training":
        return "__init__"
    name = name.removeprefix("rl_training.")
    return name if name in MODULES else None


def _imports(path: Path) -> set[str]:
    """The ``rl_training`` modules that ``path`` imports, anywhere in it (lazy imports too).

    ``from rl_training.x import y`` imports ``x.y`` where that is a module, else ``x``.
    """
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(_module(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                found.add(_module(f"{node.module}.{alias.name}") or _module(node.module))
    return {name for name in found if name is not None}


def _path(module: str) -> Path:
    path = PACKAGE / (module.replace(".", "/") + ".py")
    return path if path.exists() else PACKAGE / module.replace(".", "/") / "__init__.py"


@pytest.mark.parametrize("module", MODULES)
def test_no_import_points_up_a_layer(module):
    """A module imports only from its own layer or below, so each layer can change alone."""
    path = _path(module)
    own = _layer(module)
    upward = sorted(
        name for name in _imports(path)
        if _layer(name) > own and SHIMS.get(module) != name
    )  # fmt: skip
    assert not upward, f"rl_training.{module} (layer {own}) imports from above it: {upward}"


def test_every_shim_still_re_exports_its_module():
    """The contract's old import paths keep working: each shim imports what it names."""
    for shim, target in SHIMS.items():
        assert target in _imports(_path(shim))
