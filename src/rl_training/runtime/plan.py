"""The resolved plan of a run: everything a config means on this machine, made once.

``TrainConfig`` says what to run; :func:`resolve_plan` checks it against this
machine (the device, the env id, the env's spaces against the algorithm's spec)
before anything touches disk, and the :class:`Plan` it returns is carried from run
setup to the trainer, so no step is repeated along the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.hyperparams import Hyperparams
from rl_training.registry import AlgorithmSpec
from rl_training.runtime.device import resolve_device
from rl_training.runtime.distributed import World, check_supported, launch_world

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A config resolved for this machine."""

    config: TrainConfig
    """What was asked for."""
    spec: AlgorithmSpec
    """The algorithm's entry in the registry."""
    hp: Hyperparams
    """Its hyperparameters, overrides applied (the trainer's ``session.hp``)."""
    device: torch.device
    """Where networks, buffers and updates live."""
    observation_space: Any
    """One environment's observation space (a ``gymnasium.Space``)."""
    action_space: Any
    """One environment's action space."""
    world: World = World()
    """The processes training this run (one, unless started by torchrun)."""


def resolve_plan(config: TrainConfig, world: World | None = None) -> Plan:
    """Resolve the device and the env's spaces and check them against the algorithm.

    Args:
        config: The run.
        world: The processes training it (default: torchrun's variables, else one).

    Raises:
        ValueError: CUDA asked for and absent, an unknown env id (or one that
            cannot be made here), spaces the algorithm does not take, or an
            algorithm that cannot train on several processes under torchrun; the
            message names the bad value and what is accepted.
    """
    spec = config.spec
    world = launch_world() if world is None else world
    check_supported(spec.name, spec.distributed, world)
    device = resolve_device(config.device, world)
    observation_space, action_space = env_spaces(config.env_id)
    spec.check_spaces(config.env_id, observation_space, action_space)
    from rl_training.runtime.spaces import check_observation_space

    check_observation_space(
        spec.name, config.env_id, observation_space, images=spec.image_observations
    )
    hp = config.algo_hyperparams()
    if getattr(hp, "normalize_obs", False):
        from rl_training.runtime.spaces import check_normalizable

        check_normalizable(config.env_id, observation_space)
    buffer_size = getattr(hp, "buffer_size", None)
    if buffer_size is not None:
        from rl_training.runtime.environments import is_atari
        from rl_training.runtime.spaces import check_replay_fits

        num_envs = getattr(hp, "num_envs", 1)
        check_replay_fits(
            buffer_size, observation_space, action_space, num_envs, device,
            frame_stacked=is_atari(config.env_id),  # Atari's frames each once
        )  # fmt: skip
    if config.video_every and world.is_writer:
        check_renders(config.env_id)
    return Plan(
        config=config,
        spec=spec,
        hp=hp,
        device=device,
        observation_space=observation_space,
        action_space=action_space,
        world=world,
    )


def check_renders(env_id: str) -> None:
    """Make ``env_id`` with ``render_mode="rgb_array"``, reset it and render one frame.

    Raises:
        ValueError: it cannot (no ``rgb_array`` mode, a renderer missing such as
            pygame); one line naming the env and why, for ``--video-every``.
    """
    from rl_training.runtime.environments import make_env

    env = None
    try:
        env = make_env(env_id, render_mode="rgb_array", training=False)
        env.reset(seed=0)
        frame = env.render()
    except Exception as error:  # noqa: BLE001  # the env's own code: any error
        raise ConfigError(
            f"video_every: env {env_id!r} cannot render rgb_array frames: "
            f"{type(error).__name__}: {error}"
        ) from None
    finally:
        if env is not None:
            env.close()
    shape = getattr(frame, "shape", None)
    if shape is None or len(shape) != 3:
        raise ConfigError(
            f"video_every: env {env_id!r} renders {type(frame).__name__} "
            f"{shape if shape is not None else ''}, not an (H, W, 3) rgb_array frame"
        )


def env_spaces(env_id: str) -> tuple[Any, Any]:
    """``(observation space, action space)`` of ``env_id``, made once and closed.

    Raises:
        ValueError: gymnasium does not know ``env_id``, or cannot make it here.
    """
    from rl_training.runtime.environments import env_spec, make_env

    env_spec(env_id)
    try:
        env = make_env(env_id)
    except Exception as error:  # missing extras (box2d, mujoco...) and the like
        raise ConfigError(
            f"env_id: {env_id!r} is registered but cannot be made here: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


__all__ = ["Plan", "env_spaces", "resolve_plan"]
