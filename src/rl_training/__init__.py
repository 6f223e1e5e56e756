"""rl-training: PyTorch RL trainers that log through pluggable sinks."""

from __future__ import annotations

from rl_training.config import TrainConfig
from rl_training.experiment.logging import CompositeLogger, Logger, Sink
from rl_training.hookspecs import hookimpl
from rl_training.plugins import available_sinks
from rl_training.runtime.run_utils import (
    RunContext,
    TrainingRun,
    create_run_context,
    create_training_run,
)

__all__ = [
    "CompositeLogger",
    "Logger",
    "RunContext",
    "Sink",
    "TrainConfig",
    "TrainingRun",
    "available_sinks",
    "create_run_context",
    "create_training_run",
    "hookimpl",
]
