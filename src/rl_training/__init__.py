"""rl-training: PyTorch RL trainers that log through pluggable sinks."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_training.config import TrainConfig
    from rl_training.errors import ConfigError
    from rl_training.experiment.logging import CompositeLogger, Logger, Sink
    from rl_training.experiment.media import Histogram, Image, Text, Video
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
    from rl_training.trainers import (
        EvalResult,
        TrainedPolicy,
        TrainResult,
        evaluate,
        load_policy,
        resume,
        train,
    )

_HOMES = {
    "TrainConfig": "config",
    "ConfigError": "errors",
    "CompositeLogger": "experiment.logging",
    "Logger": "experiment.logging",
    "Sink": "experiment.logging",
    "Image": "experiment.media",
    "Video": "experiment.media",
    "Histogram": "experiment.media",
    "Text": "experiment.media",
    "RunContext": "experiment.run",
    "TrainingRun": "experiment.run",
    "create_run": "experiment.run",
    "create_run_context": "experiment.run",
    "create_training_run": "experiment.run",
    "hookimpl": "hookspecs",
    "available_sinks": "plugins",
    "reduce_metrics": "runtime.distributed",
    **dict.fromkeys(
        ("EvalResult", "TrainResult", "TrainedPolicy", "evaluate", "load_policy", "resume",
         "train"),
        "trainers",
    ),
}  # fmt: skip
"""Each public name's module. Imported on first use (PEP 562): ``import rl_training``
costs nothing, so ``rl-train`` can answer a Ctrl-C while it is still starting, and
logging-only users never wait for torch and gymnasium (imported by the trainers)."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'rl_training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rl_training.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "CompositeLogger",
    "ConfigError",
    "EvalResult",
    "Histogram",
    "Image",
    "Logger",
    "RunContext",
    "Sink",
    "Text",
    "TrainConfig",
    "TrainResult",
    "TrainedPolicy",
    "TrainingRun",
    "Video",
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
