"""Acting with trained models: :func:`load_policy`, :func:`evaluate`, and evaluation
during training (:class:`PeriodicEvaluator`, which keeps ``best_model.pt``).

Evaluation episodes run side by side in a vector env, one episode per sub-env,
episode ``i`` reset with seed ``seed + i``: an evaluation is repeatable, and a
policy network runs once per step for all episodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from rl_training.errors import ConfigError
from rl_training.experiment.logging import Logger
from rl_training.registry import get_spec
from rl_training.runtime.context import RunFiles
from rl_training.runtime.device import resolve_device
from rl_training.runtime.environments import make_env, register_atari
from rl_training.runtime.plan import Plan
from rl_training.trainers.checkpoint import (
    SavedModel,
    load_checkpoint,
    load_model,
    save_model,
)
from rl_training.trainers.normalize import ObsNormalizer
from rl_training.trainers.session import Policy, Trainer, TrainerClass, saved_modules, trainer_class

Which = Literal["final", "best", "checkpoint"]
"""Which of a run's files a policy comes from."""

_FILES: Mapping[str, str] = {
    "final": RunFiles.MODEL,
    "best": RunFiles.BEST_MODEL,
    "checkpoint": RunFiles.CHECKPOINT,
}

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation envs are seeded ``seed + EVAL_SEED_OFFSET + i``: apart from training's."""
"""Offset of the video env's seed from the run's (apart from training and evaluation)."""


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` returns."""

    mean_return: float
    """Mean of ``returns``."""
    returns: list[float]
    """Return of each episode."""
    lengths: list[int]
    """Length of each episode."""

    @property
    def std_return(self) -> float:
        """Standard deviation of ``returns`` (population)."""
        return float(np.std(self.returns))


class TrainedPolicy:
    """A trained policy: ``predict(obs)`` gives the action(s) the env accepts.

    Made by :func:`load_policy`. Observations are numpy: one observation, or a batch
    with a leading axis; the actions come back the same way.
    """

    def __init__(self, act: Policy, saved: SavedModel, device: torch.device, seed: int = 0) -> None:
        assert saved.observation_space is not None and saved.action_space is not None
        self.algo = saved.algo
        """The algorithm that trained it."""
        self.env_id = saved.env_id
        """The env it was trained on."""
        self.observation_space: gym.Space[Any] = saved.observation_space
        """What it observes."""
        self.action_space: gym.Space[Any] = saved.action_space
        """What it does."""
        self.device = device
        """Where its networks run."""
        self._act = act
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """The action for one observation, or the actions for a batch of them.

        Args:
            obs: An observation of the env's observation space, or a batch with a
                leading axis.
            deterministic: The policy's mode (argmax, or the mean action); ``False``
                samples (from a generator seeded 0 when the policy was loaded).

        A Dict space's observations are dicts of arrays (a batch: each entry with a
        leading axis); images are the ``uint8`` arrays the env gives (with
        ``normalize_obs``, the raw ones: the saved statistics are applied here).

        Raises:
            ValueError: ``obs`` has neither the observation's shape nor a batch of it.
        """
        space = self.observation_space
        batch: Any
        if isinstance(space, gym.spaces.Dict):
            single, batch = self._dict_batch(obs, space)
        else:
            array = np.asarray(obs)
            shape = tuple(space.shape or ())
            single = array.shape == shape
            batch = array[None] if single else array
            if batch.shape[1:] != shape:
                raise ConfigError(
                    f"obs: shape {array.shape} is neither an observation {shape} nor a batch "
                    f"(n, {', '.join(map(str, shape))}) of {self.env_id}'s observation space"
                )
        with torch.inference_mode():
            actions = self._act(batch, deterministic, self._generator)
        return actions[0] if single else actions

    def _dict_batch(self, obs: Any, space: gym.spaces.Dict) -> tuple[bool, dict[str, Any]]:
        """``(single, batch)`` of a Dict observation (or batch of them)."""
        keys = list(space.spaces)
        if not isinstance(obs, Mapping) or sorted(obs) != sorted(keys):
            found = sorted(obs) if isinstance(obs, Mapping) else type(obs).__name__
            raise ConfigError(
                f"obs: {found} is not a dict of {keys} ({self.env_id}'s observation space)"
            )
        arrays = {key: np.asarray(obs[key]) for key in keys}
        shapes = {key: tuple(sub.shape or ()) for key, sub in space.spaces.items()}
        single = all(arrays[key].shape == shapes[key] for key in keys)
        batch = {key: value[None] for key, value in arrays.items()} if single else arrays
        sizes = {len(value) if value.ndim else -1 for value in batch.values()}
        if len(sizes) != 1 or any(batch[key].shape[1:] != shapes[key] for key in keys):
            raise ConfigError(
                f"obs: shapes { {k: v.shape for k, v in arrays.items()} } are neither an "
                f"observation {shapes} nor a batch of one of {self.env_id}'s observation space"
            )
        return single, batch


def load_policy(
    run_dir: str | Path, which: Which = "final", device: str = "cpu", *, seed: int = 0
) -> TrainedPolicy:
    """The policy a run saved, ready to act: ``load_policy(run_dir).predict(obs)``.

    Reads weights only (no code runs) and never imports a module named inside the
    run directory: the networks are rebuilt from the spaces the file records.

    Args:
        run_dir: A run directory.
        which: ``"final"`` (``model.pt``), ``"best"`` (``best_model.pt``, kept by
            evaluation during training) or ``"checkpoint"`` (the latest checkpoint).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        seed: Seed of the generator that ``predict(..., deterministic=False)`` samples with.

    Raises:
        FileNotFoundError: the run has no such file.
        ValueError: ``which`` or ``device`` is not one of the accepted values.
    """
    if which not in _FILES:
        raise ConfigError(f"which: {which!r} is not one of {', '.join(map(repr, _FILES))}")
    path = Path(run_dir) / _FILES[which]
    resolved = resolve_device(device)
    if which == "checkpoint":
        checkpoint = load_checkpoint(path)
        cls = trainer_class(get_spec(checkpoint.config["algo"]))
        saved = checkpoint.saved_model(cls.SAVED_MODULES)
    else:
        saved = load_model(path)
        cls = trainer_class(get_spec(saved.algo))
    return TrainedPolicy(saved_policy(cls, saved, resolved), saved, resolved, seed)


def evaluate(
    run_dir: str | Path,
    n_episodes: int = 20,
    deterministic: bool = True,
    seed: int = 0,
    *,
    which: Which = "final",
) -> EvalResult:
    """Play ``n_episodes`` with the model saved in ``run_dir`` (on the CPU).

    Episode ``i`` is reset with seed ``seed + i``, so an evaluation is repeatable.
    ``which`` picks the model as :func:`load_policy` does.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``model.pt``.
        ValueError: ``n_episodes`` is not positive, or the model's env is not registered
            here (a module named in the run directory is never imported).
    """
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ConfigError(f"n_episodes: {n_episodes!r} is not a positive integer")
    policy = load_policy(run_dir, which, "cpu", seed=seed)
    envs = make_eval_envs(registered_env_id(policy.env_id), n_episodes)
    try:
        returns, lengths = run_episodes(envs, policy._act, seed, deterministic, policy._generator)
    finally:
        envs.close()
    return EvalResult(math.fsum(returns) / len(returns), returns, lengths)


def make_eval_envs(env_id: str, n: int) -> gym.vector.SyncVectorEnv:
    """``n`` copies of ``env_id``, one evaluation episode each."""
    return gym.vector.SyncVectorEnv(
        [lambda: make_env(env_id, training=False) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def run_episodes(
    envs: gym.vector.VectorEnv,
    act: Policy,
    seed: int,
    deterministic: bool,
    generator: torch.Generator,
) -> tuple[list[float], list[int]]:
    """One episode per sub-env (sub-env ``i`` reset with ``seed + i``); returns and lengths."""
    n = envs.num_envs
    seeds: Any = [seed + i for i in range(n)]  # one per sub-env (gymnasium's stubs say int)
    obs, _ = envs.reset(seed=seeds)
    returns = np.zeros(n, dtype=np.float64)
    lengths = np.zeros(n, dtype=np.int64)
    running = np.ones(n, dtype=bool)
    while running.any():
        with torch.inference_mode():
            actions = act(
                obs if isinstance(obs, Mapping) else np.asarray(obs), deterministic, generator
            )
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        returns += np.where(running, rewards, 0.0)
        lengths += running
        running &= ~(terminated | truncated)  # later episodes of a sub-env are ignored
    return [float(r) for r in returns], [int(x) for x in lengths]


class PeriodicEvaluator:
    """Evaluation during training: deterministic episodes on separately seeded envs.

    Each call logs ``eval/mean_return``, ``eval/std_return`` and ``eval/mean_length``
    at the step it ran and writes ``best_model.pt`` when the mean return is the best
    so far. It acts with a CPU copy of the trainer's current weights, so training's
    state and randomness are untouched.
    """

    def __init__(
        self, plan: Plan, trainer_cls: TrainerClass, trainer: Trainer, logger: Logger, best: Path
    ) -> None:
        self._plan, self._trainer_cls, self._trainer = plan, trainer_cls, trainer
        self._logger, self._best_path = logger, best
        self._envs = make_eval_envs(plan.config.env_id, plan.config.eval_episodes)
        self._seed = plan.config.seed + EVAL_SEED_OFFSET
        self._generator = torch.Generator().manual_seed(self._seed)
        self.best_return = -math.inf
        """The best mean return so far (``-inf`` before the first evaluation)."""

    def __call__(self, step: int) -> None:
        """Evaluate now; log the row at ``step``; keep the model if it is the best."""
        plan = self._plan
        modules = saved_modules(self._trainer)
        act = current_policy(plan, self._trainer_cls, self._trainer)
        returns, lengths = run_episodes(self._envs, act, self._seed, True, self._generator)
        mean = math.fsum(returns) / len(returns)
        self._logger.log_metrics(
            {
                "eval/mean_return": mean,
                "eval/std_return": float(np.std(returns)),
                "eval/mean_length": math.fsum(lengths) / len(lengths),
            },
            step,
        )
        if mean > self.best_return:
            self.best_return = mean
            save_model(
                self._best_path,
                algo=plan.spec.name,
                env_id=plan.config.env_id,
                hyperparams=plan.hp,
                modules=modules,
                observation_space=plan.observation_space,
                action_space=plan.action_space,
            )

    def state_dict(self) -> dict[str, Any]:
        """The best mean return so far."""
        return {"best_return": self.best_return}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best_return = float(state["best_return"])

    def close(self) -> None:
        """Close the evaluation envs."""
        self._envs.close()


def current_saved(plan: Plan, trainer: Trainer) -> SavedModel:
    """The trainer's current weights, copied to the CPU, as a :class:`SavedModel`."""
    return SavedModel(
        algo=plan.spec.name,
        env_id=plan.config.env_id,
        hyperparams={k: list(v) if isinstance(v, tuple) else v
                     for k, v in asdict(plan.hp).items()},
        state_dicts={name: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                     for name, m in saved_modules(trainer).items()},
        observation_space=plan.observation_space,
        action_space=plan.action_space,
    )  # fmt: skip


def current_policy(plan: Plan, trainer_cls: TrainerClass, trainer: Trainer) -> Policy:
    """The policy of the trainer's current weights, copied to the CPU (training's
    state and randomness are untouched)."""
    return saved_policy(trainer_cls, current_saved(plan, trainer), torch.device("cpu"))


def saved_policy(cls: TrainerClass, saved: SavedModel, device: torch.device) -> Policy:
    """The policy of a saved model on ``device``, acting on the env's raw observations
    (with ``normalize_obs``, its saved statistics normalise them first, frozen)."""
    act: Policy = cls.load_policy(saved, saved.observation_space, saved.action_space, device)
    state = saved.state_dicts.get("obs_norm")
    if state is None:
        return act
    normalizer = ObsNormalizer.from_state(state)

    def normalized(obs: Any, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        return act(normalizer.numpy(obs), deterministic, generator)

    return normalized


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
    register_atari(bare)  # ale-py's games: rl-training's own dependency, not the run's
    if bare in gym.envs.registry:
        return bare
    hint = (
        f"; it names module {module!r}, which rl-training never imports from a run "
        "directory: import it yourself first"
        if sep
        else "; import the package that registers it first"
    )
    raise ConfigError(f"env id {env_id!r} is not registered in this process{hint}")


__all__ = [
    "EvalResult",
    "PeriodicEvaluator",
    "TrainedPolicy",
    "Which",
    "evaluate",
    "load_policy",
    "registered_env_id",
]
