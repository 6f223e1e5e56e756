"""What a config needs of this machine, checked before a run writes anything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.runtime.device import check_device

ACTION_SPACES: Mapping[str, tuple[str, ...]] = {
    "ppo": ("Discrete", "Box"),
    "a2c": ("Discrete", "Box"),
    "dqn": ("Discrete",),
    "sac": ("Box",),
    "td3": ("Box",),
}
"""Algorithm -> the gymnasium action-space classes it can act in."""


def check_runtime(config: TrainConfig) -> None:
    """Check the device, the env id and that the algorithm fits the env's action space.

    Raises:
        ValueError: naming the bad value and what is accepted.
    """
    check_device(config.device)
    space = env_action_space(config.env_id)
    accepted = ACTION_SPACES[config.algo]
    if type(space).__name__ not in accepted:
        raise ConfigError(
            f"algo {config.algo!r} does not fit env {config.env_id!r}: its action space is "
            f"{space}, and {config.algo} takes {' or '.join(accepted)} action spaces"
        )


def env_action_space(env_id: str) -> Any:
    """The action space of ``env_id``, made once and closed.

    Raises:
        ValueError: gymnasium does not know ``env_id``, or cannot make it here.
    """
    import gymnasium as gym

    try:
        gym.spec(env_id)
    except gym.error.Error as error:
        raise ConfigError(
            f"env_id: {env_id!r} is not a registered gymnasium environment ({error}); "
            "e.g. 'CartPole-v1', 'Pendulum-v1' (see gymnasium.envs.registry)"
        ) from None
    try:
        env = gym.make(env_id)
    except Exception as error:  # missing extras (box2d, mujoco...) and the like
        raise ConfigError(
            f"env_id: {env_id!r} is registered but cannot be made here: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        return env.action_space
    finally:
        env.close()
