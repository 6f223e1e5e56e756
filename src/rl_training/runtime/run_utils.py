"""Run setup under the contract's import path; the code is :mod:`rl_training.experiment.run`.

Run setup starts the sinks, so it sits in the logging layer beside them; this module
only keeps ``rl_training.runtime.run_utils`` working for users. It is the one import
that points up a layer (``tests/test_layers.py`` names it).
"""

from rl_training.experiment.run import (
    RunContext,
    RunInUseError,
    SinkCreationError,
    TrainingRun,
    create_run,
    create_run_context,
    create_training_run,
    lock_run,
    open_run,
    reopen_training_run,
)

__all__ = [
    "RunContext",
    "RunInUseError",
    "SinkCreationError",
    "TrainingRun",
    "create_run",
    "create_run_context",
    "create_training_run",
    "lock_run",
    "open_run",
    "reopen_training_run",
]
