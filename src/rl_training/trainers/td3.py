"""TD3: Twin Delayed Deep Deterministic policy gradient (Fujimoto et al. 2018).

Paper: https://arxiv.org/abs/1802.09477. The three changes to DDPG: clipped double-Q
targets (the min of twin critics), delayed policy and target updates
(``policy_delay``), and target policy smoothing (clipped Gaussian noise on the
target action). Gaussian exploration noise while collecting; uniform random actions
for the first ``learning_starts`` steps. Actions live in ``[-1, 1]`` and are rescaled
to the env's bounds. As in :mod:`rl_training.trainers.sac`, the twin critics are one
batched :class:`~rl_training.trainers.networks.TwinCritic`, and the actor's loss
uses detached critic weights.

Glossary: ``q`` Q-values ``(2, batch)``, ``mu`` the deterministic policy.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.hyperparams import TD3Hyperparams
from rl_training.trainers.buffers import ReplayBuffer
from rl_training.trainers.checkpoint import SavedModel
from rl_training.trainers.envs import box_space, obs_dim, scale_action
from rl_training.trainers.networks import TwinCritic, mlp, set_precision
from rl_training.trainers.observations import obs_to_tensor
from rl_training.trainers.optim import FlatOptimizer, flatten_parameters, soft_update
from rl_training.trainers.session import Policy, Session, load_state, state_of


class DeterministicActor(nn.Module):
    """mu(s) in ``[-1, 1]``: an MLP with a tanh output."""

    def __init__(self, obs_size: int, action_size: int, net_arch: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp(obs_size, net_arch, action_size, activation=torch.relu, out_gain=None)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action for each observation."""
        return torch.tanh(self.net(obs))

    def forward_saving(self, obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The actions without an autograd graph, and what :meth:`backward_` needs."""
        out, inputs = self.net.forward_saving(obs)
        return torch.tanh(out), inputs

    def backward_(
        self, inputs: list[torch.Tensor], action: torch.Tensor, grad_action: torch.Tensor
    ) -> None:
        """Write the gradients from ``grad_action`` at the ``action`` of
        :meth:`forward_saving` (through the tanh, then the MLP)."""
        self.net.backward_(inputs, torch.ops.aten.tanh_backward(grad_action, action))


class TD3Trainer:
    """TD3 on a session: one vector step per iteration, a training phase when due."""

    CPU_THREADS: ClassVar[int | None] = None
    """Intra-op threads on the CPU (None: torch default; 400x300 layers gain from both cores)."""
    SAVED_MODULES: ClassVar[tuple[str, ...]] = ("actor", "critic")
    """The modules a model file holds (attributes of the trainer)."""

    def __init__(self, session: Session[TD3Hyperparams]) -> None:
        self.session = session
        hp, device = session.hp, session.device
        self.act_space = box_space(session.plan.action_space)
        obs_size = obs_dim(session.plan.observation_space)
        self.act_size = act_size = int(np.prod(self.act_space.shape))

        self.actor = DeterministicActor(obs_size, act_size, hp.net_arch).to(device)
        self.critic = TwinCritic(obs_size, act_size, hp.net_arch).to(device)
        set_precision(self.actor, hp.precision)
        set_precision(self.critic, hp.precision)
        self.actor_target, self.critic_target = (
            copy.deepcopy(self.actor),
            copy.deepcopy(self.critic),
        )
        self.actor_opt = FlatOptimizer([self.actor], "adam", lr=hp.learning_rate)
        self.critic_opt = FlatOptimizer([self.critic], "adam", lr=hp.learning_rate)
        self.actor_target_params = flatten_parameters([self.actor_target], with_grad=False)
        self.critic_target_params = flatten_parameters([self.critic_target], with_grad=False)

        self.buffer = ReplayBuffer(hp.buffer_size, obs_size, (act_size,), False, device)
        self.n_updates = 0
        self.train_values: dict[str, Any] = {}

    def iteration(self) -> Mapping[str, Any]:
        """One vector step of mu(s) + noise (uniform at first); a training phase when due."""
        session, hp, stepper = self.session, self.session.hp, self.session.stepper
        g, device = session.generator, session.device
        actor = self.actor

        # Collect: uniform random actions until learning_starts, then mu(s) + noise
        if stepper.steps < hp.learning_starts:
            action = torch.rand((hp.num_envs, self.act_size), generator=g, device=device) * 2 - 1
        else:
            with torch.no_grad():
                action = actor(stepper.obs)
                if hp.action_noise > 0:
                    noise = torch.randn(action.shape, generator=g, device=device)
                    action = (action + hp.action_noise * noise).clamp(-1.0, 1.0)
        self.buffer.collect(stepper, action, scale_action(action, self.act_space))

        if not hp.trains_after(stepper.steps, stepper.vector_steps):
            return self.train_values
        for _ in range(hp.gradient_steps):
            batch = self.buffer.sample(hp.batch_size, g)

            # Compute targets: clipped double-Q with target policy smoothing
            with torch.no_grad():
                noise = torch.randn(batch.actions.shape, generator=g, device=device)
                noise = (noise * hp.target_policy_noise).clamp(
                    -hp.target_noise_clip, hp.target_noise_clip
                )
                next_action = (self.actor_target(batch.next_obs) + noise).clamp(-1.0, 1.0)
                next_q = self.critic_target(batch.next_obs, next_action).min(0).values
                target_q = batch.rewards + (1 - batch.terminations) * hp.gamma * next_q

            # Optimise the critics
            error = self.write_critic_gradient(batch.obs, batch.actions, target_q)
            self.critic_opt.apply_gradient()
            critic_loss = error.square().mean(1).sum()
            self.n_updates += 1
            self.train_values.update({"loss/q": critic_loss, "train/n_updates": self.n_updates})

            # Delayed actor and target updates
            if self.n_updates % hp.policy_delay == 0:
                q1 = self.write_actor_gradient(batch.obs)
                self.actor_opt.apply_gradient()
                actor_loss = -q1.mean()
                soft_update(self.critic_target_params, self.critic_opt.param, hp.tau)
                soft_update(self.actor_target_params, self.actor_opt.param, hp.tau)
                self.train_values["loss/actor"] = actor_loss

        # Log
        return self.train_values

    def write_critic_gradient(
        self, obs: torch.Tensor, actions: torch.Tensor, target_q: torch.Tensor
    ) -> torch.Tensor:
        """Write the gradient of the critics' loss into their parameters' ``.grad``:

            L(phi) = sum_{i=1,2} mean_b (Q_phi_i(s_b, a_b) - y_b)^2

        against the clipped double-Q target ``y = r + gamma (1 - terminated)
        min_i Q_target_i(s', clip(mu_target(s') + clip(noise)))`` (``target_q``,
        ``(B,)``). Written out: dL/dQ_i = 2 (Q_i - y) / B, then back through the twins.
        To change the loss, change this method; ``test_update_gradients`` checks it
        against autograd on the formula above.

        Returns:
            ``Q_i(s, a) - y``, ``(2, B)``.
        """
        q, inputs = self.critic.forward_saving(obs, actions)
        error = q - target_q
        self.critic.backward_(inputs, error * (2.0 / obs.shape[0]))
        return error

    def write_actor_gradient(self, obs: torch.Tensor) -> torch.Tensor:
        """Write the gradient of the actor's loss into its parameters' ``.grad``:

            L(theta) = -mean_b Q_phi_1(s_b, mu_theta(s_b))

        through the first critic with its weights fixed (the critics' ``.grad`` is left
        alone). Written out: dL/dQ1 = -1 / B, back through Q1 to the action, through
        the tanh and the actor's MLP. ``test_update_gradients`` checks it against
        autograd on the formula above.

        Returns:
            ``Q1(s, mu(s))``, ``(B,)``.
        """
        action, actor_inputs = self.actor.forward_saving(obs)
        q1, critic_inputs = self.critic.q1_saving(obs, action)
        grad_q1 = torch.full_like(q1, -1.0 / obs.shape[0])
        grad_action = self.critic.q1_action_grad(critic_inputs, grad_q1)
        self.actor.backward_(actor_inputs, action, grad_action)
        return q1

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, replay buffer, counters and the session's state."""
        return state_of(
            self, "session", "actor", "critic", "actor_target", "critic_target", "actor_opt",
            "critic_opt", "buffer", "n_updates", "train_values",
        )  # fmt: skip

    load_state_dict = load_state
    """Continue from :meth:`state_dict`."""

    @staticmethod
    def load_policy(
        saved: SavedModel,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        device: torch.device,
    ) -> Policy:
        """Rebuild the trained actor for evaluation (deterministic; noise when not)."""
        box = box_space(action_space)
        act_size = int(np.prod(box.shape))
        hp = saved.hyperparams
        actor = DeterministicActor(obs_dim(observation_space), act_size, tuple(hp["net_arch"]))
        actor.to(device).load_state_dict(saved.state_dicts["actor"])
        actor.eval()

        def policy(obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
            action = actor(obs_to_tensor(obs, observation_space, device))
            if not deterministic and hp["action_noise"] > 0:
                noise = torch.randn(action.shape, generator=generator, device=device)
                action = (action + hp["action_noise"] * noise).clamp(-1.0, 1.0)
            return scale_action(action, box)

        return policy
