"""Fixtures: a real ``mlflow server`` on 127.0.0.1 (SQLite backend, local artifact root),
through ``check_ui.Server`` (the plugin's own helper, beside this directory)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from check_ui import Server  # noqa: E402


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = Server(tmp_path / "server")
    started.root.mkdir()
    started.start()
    try:
        yield started
    finally:
        started.kill()
