"""TD3: Twin Delayed Deep Deterministic policy gradient (Fujimoto et al. 2018).

Paper: https://arxiv.org/abs/1802.09477. The three changes to DDPG: clipped double-Q
targets (the min of twin critics), delayed policy and target updates
(``policy_delay``), and target policy smoothing (clipped Gaussian noise on the
target action). Gaussian exploration noise while collecting; uniform random actions
for the first ``learning_starts`` steps. Actions live in ``[-1, 1]`` and are rescaled
to the env's bounds. As in :mod:`rl_training.trainers.sac`, the twin critics are one
batched :class:`EnsembleMLP`, and the actor's loss uses detached critic weights.

Glossary: ``q`` Q-values ``(2, batch)``, ``mu`` the deterministic policy.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.hyperparams import TD3Hyperparams
from rl_training.trainers import Learned, Policy, Session
from rl_training.trainers.buffers import ReplayBuffer
from rl_training.trainers.common import (
    EnvStepper,
    FlatOptimizer,
    PeriodicLog,
    SavedModel,
    box_space,
    flatten_parameters,
    mlp,
    obs_dim,
    obs_to_tensor,
    scale_action,
    soft_update,
)
from rl_training.trainers.sac import TwinCritic

CPU_THREADS: int | None = None
"""Intra-op threads on the CPU (None: torch default; 400x300 layers gain from both cores)."""


class DeterministicActor(nn.Module):
    """mu(s) in ``[-1, 1]``: an MLP with a tanh output."""

    def __init__(self, obs_size: int, action_size: int, net_arch: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp(obs_size, net_arch, action_size, activation=torch.relu, out_gain=None)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action for each observation."""
        return torch.tanh(self.net(obs))


def learn(session: Session) -> Learned:
    """Train TD3 in ``session`` for ``config.total_timesteps`` environment steps."""
    hp: TD3Hyperparams = session.hp
    envs, device, g = session.envs, session.device, session.generator
    obs_space, act_space = envs.single_observation_space, box_space(envs.single_action_space)
    obs_size, act_size = obs_dim(obs_space), int(np.prod(act_space.shape))

    actor = DeterministicActor(obs_size, act_size, hp.net_arch).to(device)
    critic = TwinCritic(obs_size, act_size, hp.net_arch).to(device)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    actor_opt = FlatOptimizer([actor], torch.optim.Adam, lr=hp.learning_rate)
    critic_opt = FlatOptimizer([critic], torch.optim.Adam, lr=hp.learning_rate)
    actor_target_params = flatten_parameters([actor_target], with_grad=False)
    critic_target_params = flatten_parameters([critic_target], with_grad=False)

    buffer = ReplayBuffer(hp.buffer_size, obs_size, (act_size,), False, device)
    stepper = EnvStepper(session)
    total = session.config.total_timesteps
    n_updates = 0
    train_values: dict[str, Any] = {}
    log = PeriodicLog(session, hp.log_interval)

    while stepper.steps < total:
        # Collect: uniform random actions until learning_starts, then mu(s) + noise
        obs = stepper.obs
        if stepper.steps < hp.learning_starts:
            action = torch.rand((hp.num_envs, act_size), generator=g, device=device) * 2 - 1
        else:
            with torch.no_grad():
                action = actor(obs)
                if hp.action_noise > 0:
                    noise = torch.randn(action.shape, generator=g, device=device)
                    action = (action + hp.action_noise * noise).clamp(-1.0, 1.0)
        next_obs, reward, terminated, truncated = stepper.step(scale_action(action, act_space))
        buffer.add(obs, next_obs, action, reward, terminated, truncated)

        # Optimise
        if stepper.steps >= hp.learning_starts and stepper.vector_steps % hp.train_freq == 0:
            for _ in range(hp.gradient_steps):
                batch = buffer.sample(hp.batch_size, g)

                # Critics: clipped double-Q target with target policy smoothing
                with torch.no_grad():
                    noise = torch.randn(batch.actions.shape, generator=g, device=device)
                    noise = (noise * hp.target_policy_noise).clamp(
                        -hp.target_noise_clip, hp.target_noise_clip
                    )
                    next_action = (actor_target(batch.next_obs) + noise).clamp(-1.0, 1.0)
                    next_q = critic_target(batch.next_obs, next_action).min(0).values
                    target_q = batch.rewards + (1 - batch.terminations) * hp.gamma * next_q
                q = critic(batch.obs, batch.actions)
                critic_loss = (q - target_q).square().mean(1).sum()
                critic_opt.step(critic_loss)
                n_updates += 1
                train_values.update({"loss/q": critic_loss.detach(), "train/n_updates": n_updates})

                # Delayed actor and target updates: maximise Q1(s, mu(s))
                if n_updates % hp.policy_delay == 0:
                    actor_loss = -critic.q1(batch.obs, actor(batch.obs), detach=True).mean()
                    actor_opt.step(actor_loss)
                    soft_update(critic_target_params, critic_opt.param, hp.tau)
                    soft_update(actor_target_params, actor_opt.param, hp.tau)
                    train_values["loss/actor"] = actor_loss.detach()

        # Log
        log(stepper.steps, train_values)

    return Learned(modules={"actor": actor, "critic": critic}, steps=stepper.steps)


def load_policy(
    saved: SavedModel, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> Policy:
    """Rebuild the trained actor for evaluation (deterministic; noise when not)."""
    box = box_space(action_space)
    act_size = int(np.prod(box.shape))
    hp = saved.hyperparams
    actor = DeterministicActor(obs_dim(observation_space), act_size, tuple(hp["net_arch"]))
    actor.load_state_dict(saved.state_dicts["actor"])
    actor.eval()

    def policy(obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        action = actor(obs_to_tensor(obs, observation_space, torch.device("cpu")))
        if not deterministic and hp["action_noise"] > 0:
            noise = torch.randn(action.shape, generator=generator)
            action = (action + hp["action_noise"] * noise).clamp(-1.0, 1.0)
        return scale_action(action, box)

    return policy
