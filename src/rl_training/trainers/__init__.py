"""``train(config)`` and ``evaluate(run_dir)``: one run end to end, for any algorithm.

Each algorithm is a module (``ppo``, ``a2c``, ...) with two functions:

- ``learn(session) -> Learned``: train in ``session`` and return the modules to save;
- ``load_policy(saved, observation_space, action_space) -> Policy``: rebuild the policy
  from a saved model for :func:`evaluate`.

Run setup, seeding, environments, episode statistics and the model file are done
here once, not in each algorithm.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.experiment.logging import Logger
from rl_training.hyperparams import build as build_hyperparams
from rl_training.runtime.device import resolve_device
from rl_training.runtime.run_utils import TrainingRun, create_training_run
from rl_training.runtime.seeding import seed_everything
from rl_training.trainers.common import (
    EpisodeTracker,
    SavedModel,
    SpsTimer,
    load_model,
    make_vec_env,
    save_model,
)

TRAINERS: dict[str, str] = {
    "ppo": "rl_training.trainers.ppo",
    "a2c": "rl_training.trainers.a2c",
    "dqn": "rl_training.trainers.dqn",
    "sac": "rl_training.trainers.sac",
    "td3": "rl_training.trainers.td3",
}
"""Algorithm name -> module implementing it (imported on first use)."""

Policy = Callable[[np.ndarray, bool, torch.Generator], np.ndarray]
"""``policy(obs_batch, deterministic, generator) -> env actions`` for evaluation."""


@dataclass
class Session:
    """Everything a trainer's ``learn`` gets; it opens nothing of its own."""

    config: TrainConfig
    """The run's configuration."""
    hp: Any
    """The algorithm's hyperparameter dataclass, overrides applied."""
    envs: gym.vector.VectorEnv
    """``hp.num_envs`` seeded environments (same-step autoreset)."""
    logger: Logger
    """The run's logger: the only way a trainer writes metrics."""
    device: torch.device
    """Where networks, buffers and updates live."""
    generator: torch.Generator
    """Source of the trainer's randomness, on ``device``."""
    episodes: EpisodeTracker
    """Logs finished episodes and keeps the recent returns."""
    timer: SpsTimer = field(default_factory=SpsTimer)
    """For ``time/sps``."""


@dataclass
class Learned:
    """What ``learn`` returns."""

    modules: dict[str, nn.Module]
    """Modules to save in the model file, by name."""
    steps: int
    """Environment steps taken."""


class Algorithm(Protocol):
    """What an algorithm module provides."""

    CPU_THREADS: int | None
    """Intra-op threads while training on the CPU (``None``: leave torch's setting)."""

    def learn(self, session: Session) -> Learned: ...

    def load_policy(
        self, saved: SavedModel, observation_space: gym.Space[Any], action_space: gym.Space[Any]
    ) -> Policy: ...


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


def algorithm(algo: str) -> Algorithm:
    """The module implementing ``algo``.

    Raises:
        ValueError: no trainer for ``algo``.
    """
    if algo not in TRAINERS:
        raise ConfigError(f"algo: {algo!r} has no trainer; available: {', '.join(TRAINERS)}")
    module: Algorithm = importlib.import_module(TRAINERS[algo])
    return module


def train(
    config: TrainConfig,
    run_suffix: str | None = None,
    *,
    strict: bool = False,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Run one training run end to end through :func:`create_training_run`.

    Checks everything first (sinks, device, env id, action space) so that bad input
    leaves no run directory; trains; saves ``model.pt``; closes the run ``"finished"``,
    or ``"failed"`` / ``"interrupted"`` if training raises.

    Args:
        config: The run.
        run_suffix: Appended to the run directory's name.
        strict: A sink that raises stops training instead of being dropped.
        progress: Called with every row the trainer logs (after the sinks got it).

    Raises:
        ConfigError: a bad config for this machine (a ``ValueError``; nothing is written).
    """
    algorithm(config.algo)  # an unknown trainer fails before the run directory exists
    resolve_device(config.device)
    with create_training_run(config, run_suffix, strict=strict) as run:
        return fit(run, progress=progress)


def fit(run: TrainingRun, *, progress: ProgressCallback | None = None) -> TrainResult:
    """Train in an open run and save its model; the caller closes the run.

    This is :func:`train` without the run setup, for callers that need the run
    directory before training starts (the command line prints it on Ctrl-C).
    """
    config = run.run_context.config
    learner = algorithm(config.algo)
    hp = build_hyperparams(config.algo, config.hyperparams)
    device = resolve_device(config.device)
    logger: Logger = run.logger if progress is None else _Observed(run.logger, progress)
    envs = make_vec_env(config.env_id, hp.num_envs, config.seed)
    try:
        with _cpu_threads(device, learner.CPU_THREADS):
            session = Session(
                config=config,
                hp=hp,
                envs=envs,
                logger=logger,
                device=device,
                generator=seed_everything(config.seed, device),
                episodes=EpisodeTracker(hp.num_envs, logger),
            )
            start = time.perf_counter()
            learned = learner.learn(session)
            save_model(
                run.run_context.model_path,
                algo=config.algo,
                env_id=config.env_id,
                hyperparams=hp,
                modules=learned.modules,
            )
            wall_time = time.perf_counter() - start
    finally:
        envs.close()
    return TrainResult(
        run_dir=run.run_dir,
        steps=learned.steps,
        wall_time_s=wall_time,
        mean_return=session.episodes.mean_return,
        episodes=session.episodes.count,
    )


ProgressCallback = Callable[[Mapping[str, Any], int], None]
"""``progress(metrics, step)``: sees each logged row, e.g. to draw a progress bar."""


class _Observed:
    """The run's logger, also showing each row to a progress callback."""

    def __init__(self, logger: Logger, progress: ProgressCallback) -> None:
        self._logger = logger
        self._progress = progress

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._logger.log_config(config)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        self._logger.log_metrics(metrics, step)
        self._progress(metrics, step)

    def close(self, status: str = "finished") -> None:
        self._logger.close(status)


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads while training on the CPU, then restore.

    The on-policy trainers ask for one: with layers of 64 units, splitting each
    matmul across threads costs more in hand-offs than it saves (measured with
    benchmarks/bench_speed.py). The 256-unit off-policy networks keep torch's default.
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
        policy = algorithm(saved.algo).load_policy(saved, env.observation_space, env.action_space)
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


__all__ = [
    "TRAINERS",
    "EvalResult",
    "Learned",
    "ProgressCallback",
    "Session",
    "TrainResult",
    "evaluate",
    "fit",
    "train",
]
