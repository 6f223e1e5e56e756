"""A2C: synchronous Advantage Actor-Critic (Mnih et al. 2016).

Paper: https://arxiv.org/abs/1602.01783 (A3C; A2C is its synchronous variant, as
in OpenAI Baselines and Stable-Baselines3). One gradient step per rollout of
``n_steps`` x ``num_envs`` transitions, on n-step advantages (GAE with lambda 1 by
default), with RMSprop as in the paper and SB3. Truncated episodes are bootstrapped
from their final observation.

Glossary: ``adv`` advantages, ``logp`` log-probability.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from rl_training.hyperparams import A2CHyperparams
from rl_training.trainers.on_policy import (
    actor_critic_and_buffer,
    actor_critic_policy,
    collect_rollout,
    next_rollout,
    training_row,
)
from rl_training.trainers.optim import FlatOptimizer
from rl_training.trainers.session import Session, load_state, state_of


class A2CTrainer:
    """A2C on a session: one rollout and one gradient step per iteration."""

    CPU_THREADS: ClassVar[int | None] = 1
    """Intra-op threads on the CPU (small networks: one thread is fastest)."""
    SAVED_MODULES: ClassVar[tuple[str, ...]] = ("agent",)
    """The modules a model file holds (attributes of the trainer)."""

    def __init__(self, session: Session[A2CHyperparams]) -> None:
        self.session = session
        hp = session.hp
        self.agent, self.buffer = actor_critic_and_buffer(session)
        self.optimizer = FlatOptimizer(
            [self.agent],
            "rmsprop",
            lr=hp.learning_rate,
            alpha=0.99,
            eps=hp.rms_prop_eps,
            replicas=session.replicas,
        )
        self.n_updates = 0

    def iteration(self) -> Mapping[str, Any]:
        """One rollout, its n-step advantages, one gradient step on all of it."""
        session, hp, agent = self.session, self.session.hp, self.agent
        length, lr = next_rollout(session)
        self.optimizer.set_lr(lr)

        # Collect rollout
        collect_rollout(session, agent, self.buffer, length)

        # n-step advantages (GAE with gae_lambda, 1.0 by default)
        with torch.no_grad():  # not inference_mode: the results enter the loss
            last_value = agent.value(session.stepper.obs)
            adv, returns = self.buffer.advantages(length, last_value, hp.gamma, hp.gae_lambda)

        # Optimise: one step on the whole rollout
        buffer, batch = self.buffer, length * hp.num_envs
        b_values, b_returns = buffer.values[:length].reshape(batch), returns.reshape(batch)
        logp, entropy, value = agent.evaluate_actions(
            buffer.obs[:length].flatten(0, 1),
            buffer.actions[:length].reshape(batch, *agent.action_shape),
        )
        b_adv = adv.reshape(batch)
        if hp.normalize_advantage and batch > 1:
            b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
        policy_loss = -(b_adv * logp).mean()
        value_loss = nn.functional.mse_loss(value, b_returns)
        entropy_loss = -entropy.mean()
        loss = policy_loss + hp.ent_coef * entropy_loss + hp.vf_coef * value_loss

        self.optimizer.step(loss, hp.max_grad_norm)
        self.n_updates += 1

        # Log
        losses = torch.stack([policy_loss, value_loss, entropy_loss]).detach()
        return training_row(agent, losses, b_values, b_returns, lr, self.n_updates)

    def state_dict(self) -> dict[str, Any]:
        """Network, optimiser, update count and the session's counters and generator."""
        return state_of(self, "session", "agent", "optimizer", "n_updates")

    load_state_dict = load_state
    """Continue from :meth:`state_dict`."""

    load_policy = staticmethod(actor_critic_policy)
    """Rebuild the trained actor-critic as a policy."""
