"""rl-training: PyTorch RL trainers that log through pluggable sinks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.experiment.logging import CompositeLogger, Logger, Sink
from rl_training.experiment.run import (
    RunContext,
    TrainingRun,
    create_run,
    create_run_context,
    create_training_run,
)
from rl_training.hookspecs import hookimpl
from rl_training.plugins import available_sinks
from rl_training.runtime.distributed import reduce_metrics

if TYPE_CHECKING:
    from rl_training.trainers import (
        EvalResult,
        TrainedPolicy,
        TrainResult,
        evaluate,
        load_policy,
        resume,
        train,
    )

_LAZY = frozenset(
    {"EvalResult", "TrainResult", "TrainedPolicy", "evaluate", "load_policy", "resume", "train"}
)


def __getattr__(name: str) -> Any:
    # The trainers import torch and gymnasium (seconds); logging-only users and
    # `rl-train --list-sinks` should not wait for them (PEP 562 lazy attributes).
    if name in _LAZY:
        from rl_training import trainers

        return getattr(trainers, name)
    raise AttributeError(f"module 'rl_training' has no attribute {name!r}")


__all__ = [
    "CompositeLogger",
    "ConfigError",
    "EvalResult",
    "Logger",
    "RunContext",
    "Sink",
    "TrainConfig",
    "TrainResult",
    "TrainedPolicy",
    "TrainingRun",
    "available_sinks",
    "create_run",
    "create_run_context",
    "create_training_run",
    "evaluate",
    "hookimpl",
    "load_policy",
    "reduce_metrics",
    "resume",
    "train",
]
