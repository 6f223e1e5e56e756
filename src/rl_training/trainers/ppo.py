"""PPO: Proximal Policy Optimization with clipped surrogate (Schulman et al. 2017).

Paper: https://arxiv.org/abs/1707.06347. As in Stable-Baselines3 and CleanRL:
GAE advantages (arXiv:1506.02438), minibatch epochs, per-minibatch advantage
normalisation, unclipped value loss, entropy bonus, global gradient clipping.
Deliberate choices: the learning rate is annealed linearly to zero by default
(CleanRL's ``anneal_lr``), and truncated episodes are bootstrapped from their
final observation (SB3) so a time limit is not mistaken for a terminal state.

Glossary: ``adv`` advantages, ``mb`` minibatch, ``logp`` log-probability,
``ratio`` pi_new(a|s) / pi_old(a|s).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

from rl_training.hyperparams import PPOHyperparams
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
    """Train PPO in ``session`` for ``config.total_timesteps`` environment steps."""
    hp: PPOHyperparams = session.hp
    envs, device, logger = session.envs, session.device, session.logger
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    n_envs = hp.num_envs

    agent = ActorCritic(obs_space, act_space, hp.net_arch).to(device)
    optimizer = FlatOptimizer([agent], torch.optim.Adam, lr=hp.learning_rate, eps=1e-5)
    buffer = RolloutBuffer(
        hp.n_steps, n_envs, obs_dim(obs_space), agent.action_shape, agent.discrete, device
    )

    total = session.config.total_timesteps
    steps = 0
    n_updates = 0
    raw_obs, _ = envs.reset(seed=session.config.seed)
    obs = obs_to_tensor(raw_obs, obs_space, device)

    for length in rollout_lengths(total, n_envs, hp.n_steps):
        # Anneal the learning rate (CleanRL): 1 -> 0 over the run.
        lr = hp.learning_rate * (1.0 - steps / total) if hp.anneal_lr else hp.learning_rate
        optimizer.set_lr(lr)

        # Collect rollout
        obs, steps = collect_rollout(session, agent, buffer, obs, length, steps)

        # GAE
        with torch.no_grad():  # not inference_mode: the results enter the loss
            adv, returns = buffer.advantages(length, agent.value(obs), hp.gamma, hp.gae_lambda)

        # Optimise: n_epochs passes over the rollout in shuffled minibatches
        batch = length * n_envs
        b_obs = buffer.obs[:length].reshape(batch, -1)
        b_actions = buffer.actions[:length].reshape(batch, *agent.action_shape)
        b_logp = buffer.log_probs[:length].reshape(batch)
        b_values = buffer.values[:length].reshape(batch)
        b_adv, b_returns = adv.reshape(batch), returns.reshape(batch)
        mb_size = min(hp.batch_size, batch)
        stats = torch.zeros(5, device=device)  # policy, value, entropy losses; kl; clip fraction
        n_minibatches = 0
        for _epoch in range(hp.n_epochs):
            perm = torch.randperm(batch, generator=session.generator, device=device)
            e_obs, e_actions, e_logp = b_obs[perm], b_actions[perm], b_logp[perm]
            e_adv, e_returns = b_adv[perm], b_returns[perm]
            for start in range(0, batch, mb_size):
                mb = slice(start, start + mb_size)
                logp, entropy, value = agent.evaluate_actions(e_obs[mb], e_actions[mb])
                mb_adv = e_adv[mb]
                if hp.normalize_advantage and mb_adv.numel() > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                log_ratio = logp - e_logp[mb]
                ratio = log_ratio.exp()
                # Clipped surrogate objective (PPO paper, eq. 7)
                policy_loss = torch.max(
                    -mb_adv * ratio, -mb_adv * ratio.clamp(1 - hp.clip_range, 1 + hp.clip_range)
                ).mean()
                value_loss = nn.functional.mse_loss(value, e_returns[mb])
                entropy_loss = -entropy.mean()
                loss = policy_loss + hp.ent_coef * entropy_loss + hp.vf_coef * value_loss

                optimizer.step(loss, hp.max_grad_norm)

                with torch.no_grad():  # accumulated on the device: no host sync per minibatch
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # Schulman's k3 estimator
                    clip_fraction = ((ratio - 1).abs() > hp.clip_range).float().mean()
                    stats += torch.stack(
                        [policy_loss, value_loss, entropy_loss, approx_kl, clip_fraction]
                    ).detach()
                n_minibatches += 1
        n_updates += 1

        # Log (tensors: the logger copies them to the host in one transfer)
        stats /= n_minibatches
        metrics: dict[str, Any] = {
            "loss/policy": stats[0],
            "loss/value": stats[1],
            "loss/entropy": stats[2],
            "train/approx_kl": stats[3],
            "train/clip_fraction": stats[4],
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
