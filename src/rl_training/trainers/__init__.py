"""The public entry points of the trainers: :func:`train` and :func:`evaluate`.

Which trainer runs an algorithm is in :mod:`rl_training.registry`; how a trainer is
driven is in :mod:`rl_training.trainers.session`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.experiment.logging import RowObserver
from rl_training.registry import get_spec
from rl_training.runtime.run_utils import TrainingRun, create_training_run
from rl_training.trainers.checkpoint import load_model, save_model
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
    with create_training_run(config, run_suffix, strict=strict) as run:
        if progress is not None:
            run.logger.add_observer(progress)
        return fit(run)


def fit(run: TrainingRun) -> TrainResult:
    """Train in an open run and save its model; the caller closes the run.

    This is :func:`train` without the run setup, for callers that need the run
    directory before training starts (the command line prints it on Ctrl-C).

    Raises:
        ValueError: the run was not made by ``create_training_run`` (it has no plan).
    """
    plan = run.plan
    if plan is None:
        raise ConfigError(
            "fit() needs a run made by create_training_run(config) for a built-in algorithm"
        )
    trainer_cls = trainer_class(plan.spec)
    with _cpu_threads(plan.device, trainer_cls.CPU_THREADS):
        session = Session.open(plan, run.logger)
        try:
            trainer = trainer_cls(session)
            start = time.perf_counter()
            run_loop(session, trainer)
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


def evaluate(
    run_dir: str | Path, n_episodes: int = 20, deterministic: bool = True, seed: int = 0
) -> EvalResult:
    """Play ``n_episodes`` with the model saved in ``run_dir`` (on the CPU).

    Episode ``i`` is reset with seed ``seed + i``, so an evaluation is repeatable.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``model.pt``.
        ValueError: ``n_episodes`` is not positive.
    """
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ConfigError(f"n_episodes: {n_episodes!r} is not a positive integer")
    saved = load_model(Path(run_dir) / "model.pt")
    env = gym.make(saved.env_id)
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


__all__ = ["EvalResult", "TrainResult", "evaluate", "fit", "train"]
