"""Reading a run's W&B files back with W&B's own reader, ``wandb leet inspect --json``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WANDB = str(Path(sys.executable).with_name("wandb"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test talks to the network: offline, no credentials, W&B's own files in tmp."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL",
                 "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("DO_NOT_TRACK", "1")


def attempts(run_dir: Path | str) -> list[list[dict[str, Any]]]:
    """The records of each ``.wandb`` file under ``run_dir/wandb`` (one per attempt: a
    run and its resumes), in order of start time."""
    found = []
    for file in Path(run_dir, "wandb").glob("*run-*/run-*.wandb"):
        out = subprocess.run([WANDB, "leet", "inspect", "--json", str(file)],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "WANDB_MODE": "offline"})  # fmt: skip
        assert out.returncode == 0, out.stderr
        records = [json.loads(line, parse_constant=_constant)
                   for line in out.stdout.splitlines() if line.strip()]  # fmt: skip
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        found.append((run["start_time"], records))
    return [records for _, records in sorted(found, key=lambda pair: pair[0])]


def history(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every history row, attempts in order."""
    return [r["history"]["item"] for records in attempts(run_dir) for r in records
            if r["type"] == "history"]  # fmt: skip


def _constant(name: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[name]
