"""Hyperparameter presets: ``rl-train --preset atari`` instead of eight ``--hp`` flags.

Each preset holds, per algorithm, the values of RL Baselines3 Zoo
(``hyperparams/<algo>.yml``) for that family of envs, as far as rl-training has the
hyperparameter; ``--hp`` overrides a preset's value. What differs from the zoo is
said per preset below.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from rl_training.errors import ConfigError

PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = types.MappingProxyType(
    {
        # rl-zoo's "atari" entries (CnnPolicy: the Nature CNN, no hidden layer after it).
        # PPO: learning rate and clipping range annealed to 0 (the zoo's lin_2.5e-4, lin_0.1).
        "atari": {
            "ppo": {
                "num_envs": 8, "n_steps": 128, "n_epochs": 4, "batch_size": 256,
                "learning_rate": 2.5e-4, "anneal_lr": True, "clip_range": 0.1,
                "anneal_clip_range": True,
                "vf_coef": 0.5, "ent_coef": 0.01, "net_arch": [],
            },
            "a2c": {
                "num_envs": 16, "ent_coef": 0.01, "vf_coef": 0.25, "rms_prop_eps": 1e-5,
                "net_arch": [],
            },
            "dqn": {
                "buffer_size": 100_000, "learning_rate": 1e-4, "batch_size": 32,
                "learning_starts": 100_000, "target_update_interval": 1000, "train_freq": 4,
                "gradient_steps": 1, "exploration_fraction": 0.1,
                "exploration_final_eps": 0.01, "net_arch": [],
            },
        },
        # MuJoCo: PPO as rl-zoo tunes it for Hopper (normalised observations and
        # rewards, ReLU, PyTorch's default init, log std -2); SAC and TD3 as the zoo
        # runs every MuJoCo task.
        "mujoco": {
            "ppo": {
                "normalize_obs": True, "normalize_reward": True, "num_envs": 1,
                "batch_size": 32, "n_steps": 512, "gamma": 0.999,
                "learning_rate": 9.80828e-05, "anneal_lr": False, "ent_coef": 0.00229519,
                "clip_range": 0.2, "n_epochs": 5, "gae_lambda": 0.99, "max_grad_norm": 0.7,
                "vf_coef": 0.835671, "log_std_init": -2.0, "net_arch": [256, 256],
                "activation": "relu", "ortho_init": False,
            },
            "sac": {"learning_starts": 10_000},
            "td3": {"learning_starts": 10_000, "action_noise": 0.1},
        },
    }
)  # fmt: skip
"""Preset name -> algorithm -> hyperparameters."""


def preset_hyperparams(name: str, algo: str) -> dict[str, Any]:
    """The hyperparameters preset ``name`` gives ``algo`` (a copy).

    Raises:
        ValueError: an unknown preset, or one without ``algo``; the message lists
            what there is.
    """
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"--preset: {name!r} is not one of {', '.join(map(repr, PRESETS))}")
    if algo not in preset:
        raise ConfigError(
            f"--preset {name!r} has no values for algo {algo!r}; it has "
            f"{', '.join(map(repr, preset))}"
        )
    return {k: list(v) if isinstance(v, list) else v for k, v in preset[algo].items()}


__all__ = ["PRESETS", "preset_hyperparams"]
