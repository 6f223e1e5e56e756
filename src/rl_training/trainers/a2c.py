"""A2C: synchronous Advantage Actor-Critic (Mnih et al. 2016).

Paper: https://arxiv.org/abs/1602.01783 (A3C; A2C is its synchronous variant, as
in OpenAI Baselines and Stable-Baselines3). One gradient step per rollout of
``n_steps`` x ``num_envs`` transitions, on n-step advantages (GAE with lambda 1 by
default), with RMSprop as in the paper and SB3. Truncated episodes are bootstrapped
from their final observation.

Glossary: ``adv`` advantages, ``logp`` log-probability.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

from rl_training.hyperparams import A2CHyperparams
from rl_training.trainers import Learned, Policy, Session
from rl_training.trainers.actor_critic import ActorCritic, actor_critic_policy, collect_rollout
from rl_training.trainers.buffers import RolloutBuffer
from rl_training.trainers.common import (
    FlatOptimizer,
    SavedModel,
    explained_variance,
    obs_dim,
    obs_to_tensor,
    rollout_lengths,
)

CPU_THREADS: int | None = 1
"""Intra-op threads on the CPU (small networks: one thread is fastest)."""


def learn(session: Session) -> Learned:
    """Train A2C in ``session`` for ``config.total_timesteps`` environment steps."""
    hp: A2CHyperparams = session.hp
    envs, device, logger = session.envs, session.device, session.logger
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    n_envs = hp.num_envs

    agent = ActorCritic(obs_space, act_space, hp.net_arch).to(device)
    optimizer = FlatOptimizer(
        [agent], torch.optim.RMSprop, lr=hp.learning_rate, alpha=0.99, eps=hp.rms_prop_eps
    )
    buffer = RolloutBuffer(
        hp.n_steps, n_envs, obs_dim(obs_space), agent.action_shape, agent.discrete, device
    )

    steps = 0
    n_updates = 0
    raw_obs, _ = envs.reset(seed=session.config.seed)
    obs = obs_to_tensor(raw_obs, obs_space, device)

    total = session.config.total_timesteps
    for length in rollout_lengths(total, n_envs, hp.n_steps):
        lr = hp.learning_rate * (1.0 - steps / total) if hp.anneal_lr else hp.learning_rate
        optimizer.set_lr(lr)

        # Collect rollout
        obs, steps = collect_rollout(session, agent, buffer, obs, length, steps)

        # n-step advantages (GAE with gae_lambda, 1.0 by default)
        with torch.no_grad():  # not inference_mode: the results enter the loss
            adv, returns = buffer.advantages(length, agent.value(obs), hp.gamma, hp.gae_lambda)

        # Optimise: one step on the whole rollout
        batch = length * n_envs
        b_values, b_returns = buffer.values[:length].reshape(batch), returns.reshape(batch)
        logp, entropy, value = agent.evaluate_actions(
            buffer.obs[:length].reshape(batch, -1),
            buffer.actions[:length].reshape(batch, *agent.action_shape),
        )
        b_adv = adv.reshape(batch)
        if hp.normalize_advantage and batch > 1:
            b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
        policy_loss = -(b_adv * logp).mean()
        value_loss = nn.functional.mse_loss(value, b_returns)
        entropy_loss = -entropy.mean()
        loss = policy_loss + hp.ent_coef * entropy_loss + hp.vf_coef * value_loss

        optimizer.step(loss, hp.max_grad_norm)
        n_updates += 1

        # Log every log_interval updates and after the last (tensors: one host copy per row)
        if n_updates % hp.log_interval == 0 or steps >= total:
            metrics: dict[str, Any] = {
                "loss/policy": policy_loss.detach(),
                "loss/value": value_loss.detach(),
                "loss/entropy": entropy_loss.detach(),
                "train/explained_variance": explained_variance(b_values, b_returns),
                "train/learning_rate": lr,
                "train/n_updates": n_updates,
                "time/sps": session.timer.sps(steps),
            }
            if not agent.discrete:
                metrics["train/std"] = agent.log_std.detach().exp().mean()
            logger.log_metrics(metrics, steps)

    return Learned(modules={"agent": agent}, steps=steps)


def load_policy(
    saved: SavedModel, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> Policy:
    """Rebuild the trained actor for evaluation."""
    return actor_critic_policy(saved, observation_space, action_space)
