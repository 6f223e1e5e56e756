"""Where a run writes: :class:`RunContext`, and atomic JSON files.

A leaf module: run setup (:mod:`rl_training.runtime.run_utils`) and the sinks both
import it, and it imports neither.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_training.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """Where one run writes. Sinks get it from their factory."""

    config: TrainConfig
    """The run's configuration."""
    run_dir: Path
    """A directory of this run alone, directly under ``config.output_dir``."""

    @property
    def name(self) -> str:
        """The run's name: its directory's name."""
        return self.run_dir.name

    @property
    def tensorboard_dir(self) -> Path:
        """``run_dir / "tensorboard"``, created with the run directory."""
        return self.run_dir / "tensorboard"

    @property
    def metrics_path(self) -> Path:
        """``run_dir / "metrics.jsonl"`` (written by the ``json`` sink)."""
        return self.run_dir / "metrics.jsonl"

    @property
    def config_path(self) -> Path:
        """``run_dir / "config.json"`` (written by the ``json`` sink)."""
        return self.run_dir / "config.json"

    @property
    def run_info_path(self) -> Path:
        """``run_dir / "run.json"``: name, status, times, command line, versions."""
        return self.run_dir / "run.json"

    @property
    def model_path(self) -> Path:
        """``run_dir / "model.pt"``: the final model, saved by the trainer."""
        return self.run_dir / "model.pt"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write pretty, key-sorted JSON through a temporary file and a rename.

    A reader, or a process killed mid-write, sees the old file or the new one,
    never a truncated one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["RunContext", "write_json_atomic"]
