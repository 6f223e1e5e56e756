"""Making one environment: a gymnasium id, a ``module:Env-v0`` id, or an Atari game
with the standard preprocessing.

Every place that makes an env (training, evaluation, videos, the checks before a
run) calls :func:`make_env`, so they all see the same observations.

Atari (``ALE/Breakout-v5``, ``BreakoutNoFrameskip-v4``; ale-py through
``rl-training[atari]``, registered on first use) is preprocessed as in the DQN and
PPO papers, SB3's ``AtariWrapper`` and CleanRL: up to 30 no-op starts, each action
repeated 4 frames with the max of the last two, 84x84 grayscale, 4 stacked frames
(``(4, 84, 84)`` ``uint8``, channels first), FIRE pressed at the start of games
that need it. For training only, a lost life ends the episode (the game goes on
at the next reset) and rewards are clipped to their sign; ``episode/return`` and
``episode/length`` are still those of the whole game (its real score, in agent
steps). ``ALE/...-v5`` ids keep their sticky actions (``repeat_action_probability``
0.25); their own frame skip is replaced by the preprocessing's.

This module imports neither torch nor ale-py until a game is asked for.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from rl_training.errors import ConfigError

ATARI_EXTRA = "pip install 'rl-training[atari]'"
"""How to get Atari games."""

GAME_RETURN = "game_return"
"""Info key of an Atari training env: the whole game's score, at the step it ends."""
GAME_LENGTH = "game_length"
"""Info key of an Atari training env: the whole game's length in agent steps."""

_ATARI_NAME = re.compile(r"^(ALE/[A-Za-z]+-v\d+|[A-Z][A-Za-z]+(NoFrameskip)?-v[04])$")


def register_atari(name: str) -> bool:
    """Register ale-py's games if ``name`` may be one and they are not registered
    yet; whether ale-py is there."""
    if name in gym.registry or not _ATARI_NAME.match(name):
        return True
    try:
        ale_py = importlib.import_module("ale_py")
    except ImportError:
        return False
    gym.register_envs(ale_py)
    return True


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of ``env_id`` (importing ``module`` of ``module:Env-v0``,
    registering ale-py's games for an Atari id).

    Raises:
        ValueError: the module cannot be imported, or the id is not registered
            (an Atari id without ale-py names the extra to install).
    """
    module, _, name = env_id.rpartition(":")
    if module:  # "package.module:Env-v0": the module registers the env (as gym.make does)
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"env_id: {env_id!r}: module {module!r} cannot be imported ({error})"
            ) from None
    has_ale = register_atari(name)
    try:
        return gym.spec(name)
    except gym.error.Error as error:
        if not has_ale:
            raise ConfigError(
                f"env_id: {env_id!r} is an Atari game, and ale-py is not installed: {ATARI_EXTRA}"
            ) from None
        raise ConfigError(
            f"env_id: {env_id!r} is not a registered gymnasium environment ({error}); "
            "e.g. 'CartPole-v1', 'Pendulum-v1', 'ALE/Breakout-v5' (see gymnasium.envs.registry)"
        ) from None


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` is an ale-py game (after :func:`env_spec` registered them)."""
    name = env_id.rpartition(":")[2]
    spec = gym.registry.get(name)
    entry = spec.entry_point if spec is not None else None
    return isinstance(entry, str) and entry.startswith("ale_py")


def make_env(env_id: str, *, render_mode: str | None = None, training: bool = True) -> gym.Env:
    """One environment of ``env_id``, as training (or, ``training=False``,
    evaluation and videos) sees it.

    Raises:
        ValueError: see :func:`env_spec`.
        Exception: whatever the env's own constructor raises.
    """
    spec = env_spec(env_id)
    kwargs: dict[str, Any] = {} if render_mode is None else {"render_mode": render_mode}
    if not is_atari(env_id):
        return gym.make(env_id, **kwargs)
    if spec.kwargs.get("frameskip", 1) != 1:
        kwargs["frameskip"] = 1  # the preprocessing skips (and max-pools) frames itself
    return atari_wrappers(gym.make(env_id, **kwargs), training=training)


def atari_wrappers(env: gym.Env, *, training: bool) -> gym.Env:
    """The standard Atari preprocessing around a raw ALE env (frame skip 1)."""
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False,
        grayscale_obs=True, scale_obs=False,
    )  # fmt: skip
    fire = "FIRE" in env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
    env = episodic = EpisodicLife(GameScore(env))
    if fire:
        env = FireReset(env)
    if training:
        env = ClipReward(env)
    env = gym.wrappers.FrameStackObservation(env, 4)
    # Evaluation plays whole games through the very wrappers training learned behind:
    # after a lost life the same no-op, FIRE and fresh frame stack, as SB3's evaluation
    # (its Monitor under the AtariWrapper) does.
    return env if training else WholeGame(env, episodic)


def _lives(env: gym.Env) -> int:
    return int(env.unwrapped.ale.lives())  # type: ignore[attr-defined]


class GameScore(gym.Wrapper[Any, Any, Any, Any]):
    """Adds the whole game's score and length (agent steps) to the info of the step
    that ends it (:data:`GAME_RETURN`, :data:`GAME_LENGTH`), below the wrappers that
    end episodes at a lost life and clip rewards."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._return, self._length = 0.0, 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._return, self._length = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            info = {**info, GAME_RETURN: self._return, GAME_LENGTH: self._length}
        return obs, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper[Any, Any, Any, Any]):
    """A lost life ends the episode; the next reset goes on with the same game
    (one no-op step) unless the game itself ended (SB3's ``EpisodicLifeEnv``)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives = 0
        self._game_over = True

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = _lives(self.env)
        if 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def new_game(self) -> None:
        """Make the next reset a real one."""
        self._game_over = True

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if self._game_over:
            obs, info = self.env.reset(**kwargs)
        else:  # a life was lost: the game goes on
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self._lives = _lives(self.env)
        return obs, info


class FireReset(gym.Wrapper[Any, Any, Any, Any]):
    """Presses FIRE (then action 2) at reset, for games that wait for it (SB3's
    ``FireResetEnv``)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(2)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


class WholeGame(gym.Wrapper[Any, Any, Any, Any]):
    """Evaluation's Atari env: the training stack's episodes (one per life) joined
    into whole games with raw rewards. At a lost life it resets the stack below as
    training's next episode would (:class:`EpisodicLife`'s no-op, :class:`FireReset`,
    a fresh frame stack) and goes on; the game's end ends the episode, and the episode's
    rewards add up to the game's score (:class:`GameScore`)."""

    def __init__(self, env: gym.Env, episodic: EpisodicLife) -> None:
        super().__init__(env)
        self._episodic = episodic
        self._given = 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._episodic.new_game()  # a real reset, even after a game left unfinished
        self._given = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not (terminated or truncated):
            self._given += float(reward)
            return obs, reward, terminated, truncated, info
        if GAME_RETURN not in info:  # a lost life: the game goes on
            self._given += float(reward)
            obs, info = self.env.reset()
            return obs, reward, False, False, info
        # the game's end: whatever the resets in between scored is counted here
        score = float(info[GAME_RETURN])
        info = {k: v for k, v in info.items() if k not in (GAME_RETURN, GAME_LENGTH)}
        return obs, score - self._given, terminated, truncated, info


class ClipReward(gym.RewardWrapper[Any, Any]):
    """Rewards clipped to their sign, -1, 0 or 1 (training only)."""

    def reward(self, reward: SupportsFloat) -> float:
        return float(np.sign(float(reward)))


__all__ = ["GAME_LENGTH", "GAME_RETURN", "env_spec", "is_atari", "make_env", "register_atari"]
