"""Environments: vector envs, stepping, episode statistics, observation and action spaces.

Glossary: ``obs`` observation, ``n_envs`` parallel environments.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl_training.errors import EnvError
from rl_training.experiment.logging import Logger
from rl_training.runtime.environments import GAME_LENGTH, GAME_RETURN, is_atari, make_env
from rl_training.trainers.normalize import Merge, ObsNormalizer, RewardNormalizer
from rl_training.trainers.observations import layout

RETURN_MEAN_WINDOW = 100
"""Finished episodes over which ``episode/return_mean`` is taken (SB3's ``ep_rew_mean``)."""


def make_vec_env(env_id: str, num_envs: int, seed: int) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of ``env_id`` in one process, seeded ``seed, seed+1, ...``.

    Same-step autoreset: when a sub-env's episode ends, the returned observation is
    already the next episode's first, and the last one is in ``info["final_obs"]``,
    so truncated episodes can still be bootstrapped from it.

    ``copy=False``: the observations returned are the vector env's own array, which
    the next step overwrites (:class:`EnvStepper` copies them once, as it converts
    them; gymnasium's ``deepcopy`` of every step costs more than that copy).
    """
    try:
        envs = gym.vector.SyncVectorEnv(
            [lambda: make_env(env_id) for _ in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            copy=False,
        )
    except Exception as error:  # noqa: BLE001  # the env's own code: any error, one line
        raise EnvError(
            f"env {env_id!r} could not be made: {type(error).__name__}: {error}"
        ) from error
    envs.action_space.seed(seed)
    envs.single_action_space.seed(seed)
    return envs


class EpisodeTracker:
    """Sums rewards per sub-env and logs each finished episode.

    Each finished episode is one ``log_metrics`` call at the global step it ended:
    ``episode/return``, ``episode/length`` and ``episode/return_mean`` (the mean
    return of the last :data:`RETURN_MEAN_WINDOW` episodes, this one included).

    ``deferred`` (under torchrun): finished episodes wait in :meth:`take_pending`
    until the ranks exchange them with a training row, and every rank then
    records all ranks' episodes in step order.
    """

    def __init__(
        self,
        num_envs: int,
        logger: Logger,
        *,
        deferred: bool = False,
        info_keys: Sequence[str] = (),
    ) -> None:
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._logger = logger
        self._deferred = deferred
        self._pending: list[tuple[float, ...]] = []
        #: What a finished episode's final ``info`` is read for: ``is_success``, then
        #: ``TrainConfig.info_keys`` (each NaN in :meth:`update`'s ``extras`` if absent).
        self.extra_keys: tuple[str, ...] = ("is_success", *info_keys)
        self._successes: collections.deque[float] = collections.deque(maxlen=RETURN_MEAN_WINDOW)
        #: The last :data:`RETURN_MEAN_WINDOW` returns, oldest first.
        self.recent: collections.deque[float] = collections.deque(maxlen=RETURN_MEAN_WINDOW)
        #: Finished episodes so far.
        self.count = 0

    def update(
        self, rewards: np.ndarray, dones: np.ndarray, step: int, extras: np.ndarray | None = None
    ) -> None:
        """Add one vector step's rewards; log every episode that ``dones`` ends.

        ``extras``: ``(num_envs, len(extra_keys))`` values of the finished episodes'
        final infos (NaN where absent), given when ``dones`` ends any.
        """
        self._returns += rewards
        self._lengths += 1
        if dones.any():
            for i in np.flatnonzero(dones):
                found = () if extras is None else tuple(extras[i].tolist())
                self._finished(step, float(self._returns[i]), int(self._lengths[i]), found)
            self._returns[dones] = 0.0
            self._lengths[dones] = 0

    def update_games(
        self,
        ended: np.ndarray,
        returns: np.ndarray,
        lengths: np.ndarray,
        step: int,
        extras: np.ndarray | None = None,
    ) -> None:
        """Log the games that ``ended`` with their own ``returns`` and ``lengths``
        (Atari: an episode of training ends at a lost life, a game at the last)."""
        for i in np.flatnonzero(ended):
            found = () if extras is None else tuple(extras[i].tolist())
            self._finished(step, float(returns[i]), int(lengths[i]), found)

    def _finished(
        self, step: int, episode_return: float, length: int, found: tuple[float, ...]
    ) -> None:
        if self._deferred:
            self._pending.append((step, episode_return, length, *found))
        else:
            self.record(step, episode_return, length, found)

    def record(
        self, step: int, episode_return: float, length: int, extras: Sequence[float] = ()
    ) -> None:
        """Count and log one finished episode (with ``episode/success`` and
        ``episode/success_rate`` when its info had ``is_success``, and each info key
        found as ``episode/<key>``)."""
        self.recent.append(episode_return)
        self.count += 1
        row = {
            "episode/return": episode_return,
            "episode/length": length,
            "episode/return_mean": self.return_mean,
        }
        for key, value in zip(self.extra_keys, extras, strict=False):
            if math.isnan(value):
                continue
            if key == "is_success":
                self._successes.append(float(value))
                row["episode/success"] = float(value)
                row["episode/success_rate"] = math.fsum(self._successes) / len(self._successes)
            else:
                row[f"episode/{key}"] = value
        self._logger.log_metrics(row, step)

    def take_pending(self) -> np.ndarray:
        """The deferred episodes as ``(n, 3 + len(extra_keys))`` rows of ``(step, return,
        length, extras...)``; forgets them."""
        width = 3 + len(self.extra_keys)
        pending = np.array(self._pending, dtype=np.float64).reshape(-1, width)
        self._pending.clear()
        return pending

    def mean_return_last(self, episodes: int) -> float:
        """Mean return of the last ``episodes`` (at most :data:`RETURN_MEAN_WINDOW`)
        finished episodes; NaN before any episode ends."""
        if not self.recent:
            return math.nan
        last = list(self.recent)[-episodes:]
        return math.fsum(last) / len(last)

    @property
    def return_mean(self) -> float:
        """``episode/return_mean``: the mean of the last :data:`RETURN_MEAN_WINDOW` (100)
        returns (NaN before any episode ends)."""
        return self.mean_return_last(RETURN_MEAN_WINDOW)

    def state_dict(self) -> dict[str, Any]:
        """Finished episodes: their count and the recent returns (not the episodes under
        way: those restart with the environments)."""
        return {"count": self.count, "recent": list(self.recent),
                "successes": list(self._successes)}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the episodes under way start from zero."""
        self.count = int(state["count"])
        self.recent.clear()
        self.recent.extend(float(r) for r in state["recent"])
        self._successes.clear()
        self._successes.extend(float(s) for s in state.get("successes", ()))
        self.restart()

    def restart(self) -> None:
        """Forget the episodes under way (their environments were reset)."""
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._pending.clear()


class EnvStepper:
    """Steps a run's environments; every trainer collects experience through it.

    Keeps the current observation as a tensor on the device, counts environment
    steps, logs finished episodes, and hands back the real next observation of every
    transition: with same-step autoreset, a finished episode's last observation is
    in ``info["final_obs"]`` and the returned one already starts the next episode.
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        episodes: EpisodeTracker,
        device: torch.device,
        seed: int,
        *,
        replicas: int = 1,
        env_id: str = "env",
        normalize_obs: bool = False,
        normalize_reward: bool = False,
        gamma: float = 0.99,
        merge: Merge | None = None,
    ) -> None:
        self._envs = envs
        self._env_id = env_id
        self._device = device
        self._space = envs.single_observation_space
        self._layout = layout(self._space)
        self._games = is_atari(env_id)
        """Episodes are whole games (Atari): logged from the env's own count."""
        self._episodes = episodes
        self._num_envs: int = envs.num_envs
        self.step_size: int = envs.num_envs * replicas
        """Environment steps one call of :meth:`step` adds to :attr:`steps`: every
        environment of every rank (``replicas`` ranks step in lockstep)."""
        self.steps = 0
        """Environment steps so far, summed over environments (and ranks)."""
        self._merge = merge
        self.obs_norm = ObsNormalizer(self._layout.size).to(device) if normalize_obs else None
        """``normalize_obs``: the running statistics (updated at every step)."""
        self.reward_norm = RewardNormalizer(self._num_envs, gamma) if normalize_reward else None
        """``normalize_reward``: the return statistics."""
        self.raw_obs: torch.Tensor | None = None
        """``normalize_obs``: :attr:`obs` before normalisation."""
        self.obs = self.reset(seed)

    def reset(self, seed: int) -> torch.Tensor:
        """Reset every environment with ``seed``; return (and keep) the first observations.

        The observations are ``(num_envs, obs_size)`` on the device.
        """
        try:
            raw, _ = self._envs.reset(seed=seed)
        except Exception as error:  # noqa: BLE001  # the env's own code: any error
            raise self._env_error("reset", error) from error
        self._episodes.restart()
        if self.reward_norm is not None:
            self.reward_norm.returns[:] = 0.0
        self.obs = self._normalized(self._layout.to_tensor(_copied(raw), self._device), True)
        return self.obs

    def _normalized(self, obs: torch.Tensor, update: bool) -> torch.Tensor:
        """``obs`` normalised with ``normalize_obs`` (the statistics updated with it
        first if ``update``); as it is without."""
        if self.obs_norm is None:
            return obs
        if update:
            self.raw_obs = obs
            self.obs_norm.update(obs, self._merge)
        normalized: torch.Tensor = self.obs_norm(obs)
        return normalized

    def _final_info(self, infos: Mapping[str, Any], done: np.ndarray) -> np.ndarray:
        """``(num_envs, len(extra_keys))``: each key's numeric value in the finished
        episodes' final info (gymnasium's ``final_info``, masked by ``_<key>``); NaN
        where a key is absent or not a number."""
        keys = self._episodes.extra_keys
        out = np.full((self._num_envs, len(keys)), np.nan)
        final = infos.get("final_info")
        if not isinstance(final, Mapping):
            return out
        for column, key in enumerate(keys):
            values, mask = final.get(key), final.get(f"_{key}")
            if values is None or mask is None:
                continue
            for i in np.flatnonzero(done & np.asarray(mask, dtype=bool)):
                try:
                    out[i, column] = float(values[i])
                except (TypeError, ValueError):
                    continue
        return out

    def _update_games(self, infos: Mapping[str, Any], done: np.ndarray) -> None:
        """Log the games that ended (their score and length in the final infos)."""
        final = infos.get("final_info") if done.any() else None
        if not isinstance(final, Mapping) or GAME_RETURN not in final:
            return
        ended = done & np.asarray(final[f"_{GAME_RETURN}"], dtype=bool)
        if ended.any():
            self._episodes.update_games(
                ended,
                np.asarray(final[GAME_RETURN], dtype=np.float64),
                np.asarray(final[GAME_LENGTH], dtype=np.int64),
                self.steps,
                self._final_info(infos, ended),
            )

    def _env_error(self, call: str, error: Exception) -> EnvError:
        """An error of the env's own code as one :class:`EnvError` line."""
        return EnvError(
            f"env {self._env_id!r} failed in {call}() at step {self.steps}: "
            f"{type(error).__name__}: {error} (its observation space is {self._space})"
        )

    @property
    def vector_steps(self) -> int:
        """Calls to ``step`` so far (environment steps per environment)."""
        return self.steps // self.step_size

    def step(self, actions: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """Step every env; return ``(real next obs, reward, terminated, truncated)``.

        With ``normalize_obs``/``normalize_reward`` the observations and rewards
        returned (and :attr:`obs`) are normalised; episodes are logged with the env's
        own rewards. Afterwards :attr:`obs` holds the observations to act on next (a new episode's
        first where one ended).
        """
        try:  # a try costs nothing on this hot path; a context manager would, every step
            raw, reward, terminated, truncated, infos = self._envs.step(actions)
        except Exception as error:  # noqa: BLE001  # the env's own code: any error
            raise self._env_error("step", error) from error
        raw = _copied(raw)
        self.steps += self.step_size
        done = terminated | truncated
        if self._games:
            self._update_games(infos, done)
        else:
            extras = self._final_info(infos, done) if done.any() else None
            self._episodes.update(reward, done, self.steps, extras)
        to_tensor, device = self._layout.to_tensor, self._device
        if self.reward_norm is not None:
            reward = self.reward_norm(reward, done, self._merge)
        if done.any():
            real_next = to_tensor(_with_final(raw, infos["final_obs"], done), device)
            self.obs = self._normalized(to_tensor(raw, device), True)
            next_obs = self._normalized(real_next, False)
        else:
            next_obs = self.obs = self._normalized(to_tensor(raw, device), True)
        return next_obs, reward, terminated, truncated


def _copied(raw: Any) -> Any:
    """A vector env's observations copied (the next step overwrites its own arrays)."""
    if isinstance(raw, Mapping):
        return {key: np.array(value) for key, value in raw.items()}
    return np.array(raw)


def _with_final(raw: Any, final_obs: Any, done: np.ndarray) -> Any:
    """``raw`` with each finished sub-env's row replaced by its final observation."""
    index = np.flatnonzero(done)
    if isinstance(raw, Mapping):
        real = {key: value.copy() for key, value in raw.items()}
        for key, value in real.items():
            for i in index:
                value[i] = final_obs[i][key]
        return real
    real_next = raw.copy()
    for i in index:
        real_next[i] = final_obs[i]
    return real_next


# -- spaces ------------------------------------------------------------------------------


def obs_dim(space: gym.Space[Any]) -> int:
    """Flat size of a vector observation space (Box, Discrete one-hot, a Dict of them).

    Raises:
        ValueError: images (a CNN reads them: see :mod:`~rl_training.trainers.observations`)
            or a space rl-training does not read.
    """
    found = layout(space)
    if found.kind != "flat":
        raise ValueError(f"observation space {space} is not a vector space")
    return found.size


def box_space(space: gym.Space[Any]) -> gym.spaces.Box:
    """``space`` as a Box (the continuous-action trainers' only kind).

    Raises:
        ValueError: it is not a Box.
    """
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"action space {space} is not a Box")
    return space


def discrete_space(space: gym.Space[Any]) -> gym.spaces.Discrete:
    """``space`` as a Discrete space (DQN's only kind).

    Raises:
        ValueError: it is not Discrete.
    """
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(f"action space {space} is not Discrete")
    return space


def scale_action(action: torch.Tensor, space: gym.spaces.Box) -> np.ndarray:
    """Actions in ``[-1, 1]`` (how SAC and TD3 learn them) mapped onto the Box bounds."""
    unit: np.ndarray = action.cpu().numpy()
    scaled: np.ndarray = space.low + 0.5 * (unit + 1.0) * (space.high - space.low)
    return scaled
