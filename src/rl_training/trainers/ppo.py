"""PPO: Proximal Policy Optimization with clipped surrogate (Schulman et al. 2017).

Paper: https://arxiv.org/abs/1707.06347. As in Stable-Baselines3 and CleanRL:
GAE advantages (arXiv:1506.02438), minibatch epochs, per-minibatch advantage
normalisation, unclipped value loss, entropy bonus, global gradient clipping.
Deliberate choices: the learning rate is annealed linearly to zero by default
(CleanRL's ``anneal_lr``; the clipping range too with ``anneal_clip_range``), and
truncated episodes are bootstrapped from their final observation (SB3) so a time
limit is not mistaken for a terminal state.

Glossary: ``adv`` advantages, ``mb`` minibatch, ``logp`` log-probability,
``ratio`` pi_new(a|s) / pi_old(a|s).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from rl_training.hyperparams import PPOHyperparams
from rl_training.trainers.buffers import rows_at
from rl_training.trainers.on_policy import (
    actor_critic_and_buffer,
    actor_critic_policy,
    collect_rollout,
    next_rollout,
    remaining,
    training_row,
)
from rl_training.trainers.optim import FlatOptimizer
from rl_training.trainers.session import Session, load_state, state_of


class PPOTrainer:
    """PPO on a session: one rollout and ``n_epochs`` of minibatch updates per iteration."""

    CPU_THREADS: ClassVar[int | None] = 1
    """Intra-op threads on the CPU (small networks: one thread is fastest)."""
    SAVED_MODULES: ClassVar[tuple[str, ...]] = ("agent",)
    """The modules a model file holds (attributes of the trainer)."""

    def __init__(self, session: Session[PPOHyperparams]) -> None:
        self.session = session
        hp = session.hp
        self.agent, self.buffer = actor_critic_and_buffer(session)
        self.optimizer = FlatOptimizer(
            [self.agent], "adam", lr=hp.learning_rate, eps=1e-5, replicas=session.replicas
        )
        self.n_updates = 0

    def iteration(self) -> Mapping[str, Any]:
        """One rollout, its advantages, ``n_epochs`` passes of minibatch updates."""
        session, hp, agent = self.session, self.session.hp, self.agent
        length, lr = next_rollout(session)
        self.optimizer.set_lr(lr)
        clip = hp.clip_range * remaining(session) if hp.anneal_clip_range else hp.clip_range

        # Collect rollout
        collect_rollout(session, agent, self.buffer, length)

        # GAE
        with torch.no_grad():  # not inference_mode: the results enter the loss
            last_value = agent.value(session.stepper.obs)
            adv, returns = self.buffer.advantages(length, last_value, hp.gamma, hp.gae_lambda)

        # Optimise: n_epochs passes over the rollout in shuffled minibatches
        buffer, batch = self.buffer, length * hp.num_envs
        b_obs = buffer.obs[:length].flatten(0, 1)
        b_actions = buffer.actions[:length].reshape(batch, *agent.action_shape)
        b_logp = buffer.log_probs[:length].reshape(batch)
        b_values = buffer.values[:length].reshape(batch)
        b_adv, b_returns = adv.reshape(batch), returns.reshape(batch)
        mb_size = min(hp.batch_size, batch)
        stats = torch.zeros(5, device=session.device)  # 3 losses, approx kl, clip fraction
        n_minibatches = 0
        for _epoch in range(hp.n_epochs):
            perm = torch.randperm(batch, generator=session.generator, device=session.device)
            e_obs, e_actions, e_logp, e_adv, e_returns = (
                rows_at(b, perm) for b in (b_obs, b_actions, b_logp, b_adv, b_returns)
            )
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
                    -mb_adv * ratio, -mb_adv * ratio.clamp(1 - clip, 1 + clip)
                ).mean()
                value_loss = nn.functional.mse_loss(value, e_returns[mb])
                entropy_loss = -entropy.mean()
                loss = policy_loss + hp.ent_coef * entropy_loss + hp.vf_coef * value_loss

                self.optimizer.step(loss, hp.max_grad_norm)

                with torch.no_grad():  # accumulated on the device: no host sync per minibatch
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # Schulman's k3 estimator
                    clip_fraction = ((ratio - 1).abs() > clip).float().mean()
                    stats += torch.stack(
                        [policy_loss, value_loss, entropy_loss, approx_kl, clip_fraction]
                    ).detach()
                n_minibatches += 1
        self.n_updates += 1

        # Log
        stats /= n_minibatches
        row = training_row(agent, stats, b_values, b_returns, lr, self.n_updates)
        row["train/approx_kl"], row["train/clip_fraction"] = stats[3], stats[4]
        row["train/clip_range"] = clip
        return row

    def state_dict(self) -> dict[str, Any]:
        """Network, optimiser, update count and the session's counters and generator."""
        return state_of(self, "session", "agent", "optimizer", "n_updates")

    load_state_dict = load_state
    """Continue from :meth:`state_dict`."""

    load_policy = staticmethod(actor_critic_policy)
    """Rebuild the trained actor-critic as a policy."""
