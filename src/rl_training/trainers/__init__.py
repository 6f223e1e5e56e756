"""The public entry points of the trainers: :func:`train` and :func:`evaluate`.

Which trainer runs an algorithm is in :mod:`rl_training.registry`; how a trainer is
driven is in :mod:`rl_training.trainers.session`.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.experiment.logging import RowObserver
from rl_training.registry import get_spec
from rl_training.runtime.run_utils import (
    TrainingRun,
    create_training_run,
    lock_run,
    reopen_training_run,
)
from rl_training.runtime.seeding import resume_seed
from rl_training.runtime.signals import graceful_stop, interrupt_for, requested_stop
from rl_training.trainers.checkpoint import (
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
)
from rl_training.trainers.session import Session, run_loop, trainer_class


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    """The run directory (metrics, TensorBoard events, ``model.pt``)."""
    steps: int
    """Environment steps taken."""
    wall_time_s: float
    """Seconds from the start of training to the saved model."""
    mean_return: float
    """Mean return of the last 20 training episodes (NaN if none finished)."""
    episodes: int
    """Training episodes finished."""


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` returns."""

    mean_return: float
    """Mean of ``returns``."""
    returns: list[float]
    """Return of each episode."""
    lengths: list[int]
    """Length of each episode."""


def train(
    config: TrainConfig,
    run_suffix: str | None = None,
    *,
    strict: bool = False,
    progress: RowObserver | None = None,
) -> TrainResult:
    """Run one training run end to end through :func:`create_training_run`.

    Checks everything first (sinks, device, env id, spaces) so that bad input leaves
    no run directory; trains; saves ``model.pt``; closes the run ``"finished"``, or
    ``"failed"`` / ``"interrupted"`` if training raises.

    Args:
        config: The run.
        run_suffix: Appended to the run directory's name.
        strict: A sink that raises stops training instead of being dropped.
        progress: Called with every row the trainer logs (after the sinks got it).

    Raises:
        ConfigError: a bad config for this machine (a ``ValueError``; nothing is written).
    """
    with graceful_stop(), create_training_run(config, run_suffix, strict=strict) as run:
        if progress is not None:
            run.logger.add_observer(progress)
        return fit(run)


def resume(
    run_dir: str | Path,
    *,
    total_timesteps: int | None = None,
    strict: bool = False,
    progress: RowObserver | None = None,
) -> TrainResult:
    """Continue a run in its own directory from its checkpoint.

    Algorithm, env, seed and hyperparameters come from the checkpoint; only the
    budget may grow. Every sink continues one history from the checkpoint's step S:
    what the earlier attempt logged after S is dropped. ``run.json`` records the
    resume and the new status.

    Args:
        run_dir: A run directory holding ``checkpoint.pt``.
        total_timesteps: A new budget (larger than S); by default the run's own.
        strict: A sink that raises stops training instead of being dropped.
        progress: Called with every row logged (after the sinks got it).

    Raises:
        FileNotFoundError: ``run_dir`` holds no checkpoint.
        ValueError: the run already finished and no larger budget was given, the new
            budget is not above S, or the run is in use by a live process; nothing
            changed on disk.
    """
    run_dir = Path(run_dir)
    with graceful_stop():
        run, state = open_resumed_run(run_dir, total_timesteps, strict=strict)
        with run:
            if progress is not None:
                run.logger.add_observer(progress)
            return fit(run, state)


def open_resumed_run(
    run_dir: Path, total_timesteps: int | None, *, strict: bool = False
) -> tuple[TrainingRun, dict[str, Any]]:
    """Check that ``run_dir`` can be resumed, lock it and open it again in place.

    Returns the open run and the trainer state to continue from (see :func:`resume`).
    """
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    lock = lock_run(run_dir)
    try:
        step, fields = checkpoint.step, dict(checkpoint.config)
        status = _run_status(run_dir)
        if total_timesteps is None:
            if status == "finished" or step >= fields["total_timesteps"]:
                raise ConfigError(
                    f"run {run_dir} already finished at step {step}; pass a larger "
                    "total_timesteps (--total-timesteps) to train it further"
                )
        elif total_timesteps <= step:
            raise ConfigError(
                f"total_timesteps: {total_timesteps} must be above the checkpoint's step "
                f"{step} to resume {run_dir}"
            )
        else:
            fields["total_timesteps"] = total_timesteps
        config = TrainConfig(**fields, output_dir=run_dir.parent)
        return reopen_training_run(run_dir, config, step, lock, strict=strict), checkpoint.trainer
    except BaseException:
        lock.release()
        raise


def _run_status(run_dir: Path) -> str | None:
    try:
        status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, str) else None


def fit(run: TrainingRun, state: Mapping[str, Any] | None = None) -> TrainResult:
    """Train in an open run and save its model; the caller closes the run.

    This is :func:`train` without the run setup, for callers that need the run
    directory before training starts (the command line prints it on Ctrl-C).
    Checkpoints are written every ``config.checkpoint_interval`` steps, when a stop
    is requested (then ``KeyboardInterrupt``, or ``Terminated`` for SIGTERM, is
    raised, so the run closes ``"interrupted"``) and at the end.

    Args:
        run: An open run made by :func:`create_training_run` (or a resume).
        state: A trainer state to continue from (a checkpoint's).

    Raises:
        ValueError: the run was not made for a built-in algorithm (it has no plan).
        KeyboardInterrupt: a stop was requested; the checkpoint is written.
    """
    plan = run.plan
    if plan is None:
        raise ConfigError(
            "fit() needs a run made by create_training_run(config) for a built-in algorithm"
        )
    config = plan.config
    trainer_cls = trainer_class(plan.spec)
    with _cpu_threads(plan.device, trainer_cls.CPU_THREADS):
        session = Session.open(plan, run.logger)
        try:
            trainer = trainer_cls(session)
            if state is not None:
                trainer.load_state_dict(state)
                # Environments are not in a checkpoint: they restart, seeded from the
                # seed and the step, so resuming one checkpoint twice gives one history.
                session.stepper.reset(resume_seed(config.seed, session.steps))
            written = {"step": -1}

            def checkpoint() -> None:
                if written["step"] != session.steps:
                    save_checkpoint(
                        run.run_context.checkpoint_path,
                        config=config,
                        step=session.steps,
                        state=trainer.state_dict(),
                    )
                    written["step"] = session.steps

            start = time.perf_counter()
            finished = run_loop(session, trainer, checkpoint, config.checkpoint_interval)
            checkpoint()
            if not finished:
                signum = requested_stop()
                raise interrupt_for(signum if signum is not None else signal.SIGINT)
            save_model(
                run.run_context.model_path,
                algo=plan.spec.name,
                env_id=plan.config.env_id,
                hyperparams=plan.hp,
                modules=trainer.saved_modules(),
            )
            wall_time = time.perf_counter() - start
        finally:
            session.close()
    return TrainResult(
        run_dir=run.run_dir,
        steps=session.steps,
        wall_time_s=wall_time,
        mean_return=session.episodes.mean_return,
        episodes=session.episodes.count,
    )


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads while training on the CPU, then restore.

    The on-policy trainers and DQN ask for one: with layers this small, splitting
    each matmul across threads costs more in hand-offs than it saves (measured with
    benchmarks/bench_speed.py). SAC and TD3 keep torch's default.
    """
    if device.type != "cpu" or threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def registered_env_id(env_id: str) -> str:
    """The registered gymnasium id to make for an env id read from a run directory.

    ``gym.make("module:Env-v0")`` imports ``module``; a run directory from someone
    else must not make this process run code, so the module part is dropped and the
    env must already be registered (import its package first).

    Raises:
        ValueError: the env is not registered in this process.
    """
    module, sep, name = env_id.rpartition(":")
    bare = name if sep else env_id
    if bare in gym.envs.registry:
        return bare
    hint = (
        f"; it names module {module!r}, which rl-training never imports from a run "
        "directory: import it yourself first"
        if sep
        else "; import the package that registers it first"
    )
    raise ConfigError(f"env id {env_id!r} is not registered in this process{hint}")


def evaluate(
    run_dir: str | Path, n_episodes: int = 20, deterministic: bool = True, seed: int = 0
) -> EvalResult:
    """Play ``n_episodes`` with the model saved in ``run_dir`` (on the CPU).

    Episode ``i`` is reset with seed ``seed + i``, so an evaluation is repeatable.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``model.pt``.
        ValueError: ``n_episodes`` is not positive, or the model's env is not registered
            here (a module named in the run directory is never imported).
    """
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ConfigError(f"n_episodes: {n_episodes!r} is not a positive integer")
    saved = load_model(Path(run_dir) / "model.pt")
    env = gym.make(registered_env_id(saved.env_id))
    generator = torch.Generator().manual_seed(seed)
    returns: list[float] = []
    lengths: list[int] = []
    try:
        policy = trainer_class(get_spec(saved.algo)).load_policy(
            saved, env.observation_space, env.action_space
        )
        for episode in range(n_episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, length, done = 0.0, 0, False
            while not done:
                with torch.inference_mode():
                    action = policy(np.asarray(obs)[None], deterministic, generator)[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
    finally:
        env.close()
    return EvalResult(
        mean_return=math.fsum(returns) / len(returns), returns=returns, lengths=lengths
    )


__all__ = ["EvalResult", "TrainResult", "evaluate", "fit", "resume", "train"]
