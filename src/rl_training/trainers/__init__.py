"""The public entry points of the trainers: :func:`train`, :func:`resume`,
:func:`evaluate` and :func:`load_policy`.

Which trainer runs an algorithm is in :mod:`rl_training.registry`; a run's
lifecycle (opening, training, checkpoints, the summary) is in
:mod:`rl_training.trainers.lifecycle`; how a trainer is driven is in
:mod:`rl_training.trainers.session`.
"""

from __future__ import annotations

from pathlib import Path

from rl_training.config import TrainConfig
from rl_training.experiment.logging import RowObserver
from rl_training.experiment.run import create_training_run
from rl_training.runtime.context import RunFiles
from rl_training.runtime.signals import graceful_stop
from rl_training.trainers.checkpoint import load_checkpoint
from rl_training.trainers.evaluation import EvalResult, TrainedPolicy, evaluate, load_policy
from rl_training.trainers.lifecycle import (
    RunObserver,
    TrainResult,
    fit,
    joined,
    observe,
    open_resumed_run,
)


def train(
    config: TrainConfig,
    run_suffix: str | None = None,
    *,
    strict: bool = False,
    progress: RowObserver | RunObserver | None = None,
) -> TrainResult:
    """Run one training run end to end through :func:`create_training_run`.

    Checks everything first (sinks, device, env id, spaces) so that bad input leaves
    no run directory; trains; saves ``model.pt``; closes the run ``"finished"``, or
    ``"failed"`` / ``"interrupted"`` if training raises.

    Args:
        config: The run.
        run_suffix: Appended to the run directory's name.
        strict: A sink that raises stops training instead of being dropped.
        progress: Given every row the trainer logs (after the sinks got it); a
            :class:`~rl_training.trainers.lifecycle.RunObserver` is also told when
            the run is open.

    Under torchrun, every process calls it: they join the process group (and
    leave it at the end), rank 0 writes the one run, and the model trains on all.

    Raises:
        ConfigError: a bad config for this machine (a ``ValueError``; nothing is written).
        KeyboardInterrupt: SIGINT or SIGTERM stopped the run (it is closed
            ``"interrupted"``, its checkpoint written).
    """
    with graceful_stop(), joined(config.algo, config.device):
        with create_training_run(config, run_suffix, strict=strict) as run:
            observe(run, progress)
            return fit(run)


def resume(
    run_dir: str | Path,
    *,
    total_timesteps: int | None = None,
    device: str | None = None,
    strict: bool = False,
    progress: RowObserver | RunObserver | None = None,
) -> TrainResult:
    """Continue a run in its own directory from its checkpoint.

    Algorithm, env, seed and hyperparameters come from the checkpoint; only the
    budget may grow. Every sink continues one history from the checkpoint's step S:
    what the earlier attempt logged after S is dropped. ``run.json`` records the
    resume and the new status.

    Args:
        run_dir: A run directory holding ``checkpoint.pt``.
        total_timesteps: A new budget (larger than S); by default the run's own.
        device: Where to continue (``"cpu"``, ``"cuda"``...); by default the run's own.
        strict: A sink that raises stops training instead of being dropped.
        progress: As for :func:`train`.

    Raises:
        FileNotFoundError: ``run_dir`` holds no checkpoint.
        ValueError: the run already finished and no larger budget was given, the new
            budget is not above S, the checkpoint is another run's, ``run.json`` is
            malformed, a run file is a symbolic link, the env or device is not
            available here, or the run is in use by a live process; nothing changed
            on disk.
        KeyboardInterrupt: as for :func:`train`.
    """
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(RunFiles(run_dir).checkpoint)
    device = device if device is not None else checkpoint.config["device"]
    with graceful_stop(), joined(checkpoint.config["algo"], device):
        with open_resumed_run(
            run_dir, total_timesteps, checkpoint, device=device, strict=strict
        ) as run:
            observe(run, progress)
            return fit(run, checkpoint)


__all__ = [
    "EvalResult",
    "RunObserver",
    "TrainResult",
    "TrainedPolicy",
    "evaluate",
    "fit",
    "load_policy",
    "resume",
    "train",
]
