"""SAC: Soft Actor-Critic with automatic entropy tuning (Haarnoja et al. 2018).

Papers: https://arxiv.org/abs/1801.01290 and https://arxiv.org/abs/1812.05905
(learned temperature). As in Stable-Baselines3: twin Q-networks with Polyak-averaged
targets, a tanh-squashed Gaussian policy, ``alpha`` learned towards a target entropy
of ``-dim(A)``, uniform random actions for the first ``learning_starts`` steps.
Actions are stored and learned in ``[-1, 1]`` and rescaled to the env's bounds.
Deliberate implementation choices: the twin critics run as one batched
:class:`EnsembleMLP`, and the actor's loss goes through detached critic weights so
no critic gradients are computed for it.

Glossary: ``q`` Q-values ``(2, batch)``, ``logp`` log pi(a|s), ``alpha`` entropy
temperature, ``u`` the pre-tanh action.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.hyperparams import SACHyperparams
from rl_training.trainers.buffers import ReplayBuffer
from rl_training.trainers.checkpoint import SavedModel
from rl_training.trainers.envs import box_space, obs_dim, scale_action
from rl_training.trainers.networks import TwinCritic, mlp, set_precision
from rl_training.trainers.observations import obs_to_tensor
from rl_training.trainers.optim import FlatOptimizer, flatten_parameters, soft_update
from rl_training.trainers.session import Policy, Session, load_state, state_of

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
"""Clamp of the policy's log standard deviation (SB3, and the authors' code)."""

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class SquashedGaussianActor(nn.Module):
    """pi(a|s): a Gaussian over ``u``, squashed by ``tanh`` into ``[-1, 1]``."""

    def __init__(self, obs_size: int, action_size: int, net_arch: tuple[int, ...]) -> None:
        super().__init__()
        self.action_size = action_size
        # One head of 2 x action_size = SB3's separate mean and log_std heads.
        self.net = mlp(obs_size, net_arch, 2 * action_size, activation=torch.relu, out_gain=None)

    def forward(
        self, obs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``(action in [-1, 1], log_prob)``; without a generator, the mean action."""
        out: torch.Tensor = self.net(obs)
        mean, log_std = out[..., : self.action_size], out[..., self.action_size :]
        if generator is None:
            return torch.tanh(mean), torch.zeros(mean.shape[0], device=mean.device)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        u = mean + noise * log_std.exp()
        action = torch.tanh(u)
        # log N(u; mean, std) minus the tanh change of variables (SAC paper, eq. 26)
        log_prob = (-0.5 * noise.square() - log_std - _LOG_SQRT_2PI).sum(-1)
        log_prob = log_prob - torch.log1p(-action.square() + 1e-6).sum(-1)
        return action, log_prob

    def forward_saving(
        self, obs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, _ActorSaved]:
        """:meth:`forward` with a generator (the same draws), without an autograd
        graph, and what :meth:`backward_` needs."""
        out, inputs = self.net.forward_saving(obs)
        with torch.no_grad():
            mean, log_std_raw = out[..., : self.action_size], out[..., self.action_size :]
            log_std = log_std_raw.clamp(LOG_STD_MIN, LOG_STD_MAX)
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            std = log_std.exp()
            action = torch.tanh(mean + noise * std)
            log_prob = (-0.5 * noise.square() - log_std - _LOG_SQRT_2PI).sum(-1)
            log_prob = log_prob - torch.log1p(-action.square() + 1e-6).sum(-1)
        return action, log_prob, _ActorSaved(inputs, log_std_raw, noise, std, action)

    def backward_(
        self, saved: _ActorSaved, grad_action: torch.Tensor, grad_log_prob: torch.Tensor
    ) -> None:
        """Write the gradients (into the parameters' ``.grad``) of a loss whose gradient
        is ``grad_action`` at the action and ``grad_log_prob`` (``(batch, 1)``, or a
        number for every sample) at the log-probability of :meth:`forward_saving`:
        through the tanh's change of variables, the reparameterised sample, the clamp
        and the MLP."""
        a = saved.action
        with torch.no_grad():
            # log_prob's -log1p(-a^2 + 1e-6) term (its argument as the forward rounds it:
            # near a = +-1 the order matters), then the tanh: gradient at u
            grad_a = grad_action + grad_log_prob * 2 * a / (-a.square() + 1e-6 + 1)
            grad_u = torch.ops.aten.tanh_backward(grad_a, a)
            # u = mean + noise * exp(log_std); log_prob's -log_std term; the clamp
            grad_log_std = grad_u * saved.noise * saved.std - grad_log_prob
            inside = (saved.log_std_raw >= LOG_STD_MIN) & (saved.log_std_raw <= LOG_STD_MAX)
            grad_out = torch.cat([grad_u, grad_log_std * inside], dim=-1)
        self.net.backward_(saved.inputs, grad_out)


class _ActorSaved(NamedTuple):
    """What :meth:`SquashedGaussianActor.backward_` needs from its forward."""

    inputs: list[torch.Tensor]
    log_std_raw: torch.Tensor
    noise: torch.Tensor
    std: torch.Tensor
    action: torch.Tensor


class Temperature(nn.Module):
    """The entropy temperature as a module: ``log(alpha)``, one parameter."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))


class SACTrainer:
    """SAC on a session: one vector step per iteration, a training phase when due."""

    CPU_THREADS: ClassVar[int | None] = None
    """Intra-op threads on the CPU (None: torch default; 256-unit layers gain from both cores)."""
    SAVED_MODULES: ClassVar[tuple[str, ...]] = ("actor", "critic")
    """The modules a model file holds (attributes of the trainer)."""

    def __init__(self, session: Session[SACHyperparams]) -> None:
        self.session = session
        hp, device = session.hp, session.device
        self.act_space = box_space(session.plan.action_space)
        obs_size = obs_dim(session.plan.observation_space)
        self.act_size = act_size = int(np.prod(self.act_space.shape))

        self.actor = SquashedGaussianActor(obs_size, act_size, hp.net_arch).to(device)
        self.critic = TwinCritic(obs_size, act_size, hp.net_arch, product_head=True).to(device)
        set_precision(self.actor, hp.precision)
        set_precision(self.critic, hp.precision)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = FlatOptimizer([self.actor], "adam", lr=hp.learning_rate)
        self.critic_opt = FlatOptimizer([self.critic], "adam", lr=hp.learning_rate)
        self.target_params = flatten_parameters([self.critic_target], with_grad=False)

        # Entropy temperature: learned as log(alpha) unless ent_coef is a number.
        if isinstance(hp.ent_coef, str):  # "auto" (alpha starts at 1) or "auto_<initial>"
            learn_alpha = True
            alpha_init = float(hp.ent_coef[5:]) if hp.ent_coef.startswith("auto_") else 1.0
        else:
            learn_alpha, alpha_init = False, float(hp.ent_coef)
        self.temperature = Temperature(alpha_init).to(device)
        self.log_alpha = self.temperature.log_alpha
        self.alpha_opt = (
            FlatOptimizer([self.temperature], "adam", lr=hp.learning_rate) if learn_alpha else None
        )
        self.target_entropy = (
            -float(act_size) if hp.target_entropy == "auto" else float(hp.target_entropy)
        )

        self.buffer = ReplayBuffer(hp.buffer_size, obs_size, (act_size,), False, device)
        self.n_updates = 0
        self.train_values: dict[str, Any] = {}

    def iteration(self) -> Mapping[str, Any]:
        """One vector step of the policy (uniform at first); a training phase when due."""
        session, hp, stepper = self.session, self.session.hp, self.session.stepper
        g, device = session.generator, session.device
        actor, log_alpha = self.actor, self.log_alpha

        # Collect: uniform random actions until learning_starts, then the policy
        if stepper.steps < hp.learning_starts:
            action = torch.rand((hp.num_envs, self.act_size), generator=g, device=device) * 2 - 1
        else:
            with torch.no_grad():
                action, _ = actor(stepper.obs, g)
        self.buffer.collect(stepper, action, scale_action(action, self.act_space))

        if not hp.trains_after(stepper.steps, stepper.vector_steps):
            return self.train_values
        for _ in range(hp.gradient_steps):
            batch = self.buffer.sample(hp.batch_size, g)
            alpha = log_alpha.detach().exp()

            # Temperature (SAC v2, eq. 18), from the current policy's log-probs
            pi_action, logp, actor_saved = actor.forward_saving(batch.obs, g)
            if self.alpha_opt is not None:
                alpha_loss = -(log_alpha * (logp + self.target_entropy)).mean()
                self.alpha_opt.step(alpha_loss)
                self.train_values["loss/alpha"] = alpha_loss.detach()

            # Compute targets: soft Bellman target from the target twins (eq. 3, 5)
            with torch.no_grad():
                next_action, next_logp = actor(batch.next_obs, g)
                next_q = self.critic_target(batch.next_obs, next_action).min(0).values
                target_q = batch.rewards + (1 - batch.terminations) * hp.gamma * (
                    next_q - alpha * next_logp
                )

            # Optimise the critics, then the actor through the just-updated critics
            error = self.write_critic_gradient(batch.obs, batch.actions, target_q)
            self.critic_opt.apply_gradient()
            critic_loss = 0.5 * error.square().mean(1).sum()
            q_pi = self.write_actor_gradient(batch.obs, pi_action, actor_saved, alpha)
            self.actor_opt.apply_gradient()
            actor_loss = (alpha * logp - q_pi).mean()

            soft_update(self.target_params, self.critic_opt.param, hp.tau)
            self.n_updates += 1

        # Log
        self.train_values.update(
            {
                "loss/q": critic_loss.detach(),
                "loss/actor": actor_loss.detach(),
                "train/alpha": log_alpha.detach().exp(),
                "train/n_updates": self.n_updates,
            }
        )
        return self.train_values

    def write_critic_gradient(
        self, obs: torch.Tensor, actions: torch.Tensor, target_q: torch.Tensor
    ) -> torch.Tensor:
        """Write the gradient of the critics' loss into their parameters' ``.grad``:

            L(phi) = 1/2 sum_{i=1,2} mean_b (Q_phi_i(s_b, a_b) - y_b)^2

        against the soft Bellman target (SAC paper, eq. 3 and 5) ``y = r + gamma
        (1 - terminated) (min_i Q_target_i(s', a') - alpha log pi(a'|s'))``, ``a' ~
        pi(.|s')`` (``target_q``, ``(B,)``). Written out: dL/dQ_i = (Q_i - y) / B, then
        back through the twins. To change the loss, change this method;
        ``test_update_gradients`` checks it against autograd on the formula above.

        Returns:
            ``Q_i(s, a) - y``, ``(2, B)``.
        """
        q, inputs = self.critic.forward_saving(obs, actions)
        error = q - target_q
        self.critic.backward_(inputs, error / obs.shape[0])
        return error

    def write_actor_gradient(
        self, obs: torch.Tensor, pi_action: torch.Tensor, saved: _ActorSaved, alpha: torch.Tensor
    ) -> torch.Tensor:
        """Write the gradient of the actor's loss into its parameters' ``.grad``:

            L(theta) = mean_b (alpha log pi_theta(a_b|s_b) - min_i Q_phi_i(s_b, a_b)),
            a_b = tanh(mean_theta(s_b) + eps_b std_theta(s_b))

        (SAC paper, eq. 7, reparameterised; ``pi_action`` and ``saved`` come from
        :meth:`SquashedGaussianActor.forward_saving` on ``obs``), through the critics
        with their weights fixed (their ``.grad`` is left alone) and ``alpha`` held
        constant. Written out: -1/B at the smaller twin of each sample and alpha/B at
        each log-probability, back through the critics to the action, then through
        the tanh's change of variables, the sample and the log-std clamp
        (:meth:`SquashedGaussianActor.backward_`). ``test_update_gradients`` checks it
        against autograd on the formula above.

        Returns:
            ``min_i Q_i(s, a)``, ``(B,)``.
        """
        batch_size = obs.shape[0]
        q, inputs = self.critic.forward_saving(obs, pi_action)
        q_pi, smaller = q.min(0)
        grad_q = torch.zeros_like(q).scatter_(0, smaller.unsqueeze(0), -1.0 / batch_size)
        grad_action = self.critic.action_grad(inputs, grad_q)
        self.actor.backward_(saved, grad_action, alpha / batch_size)
        return q_pi

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, temperature, replay buffer, counters, the session's state."""
        return state_of(
            self, "session", "actor", "critic", "critic_target", "actor_opt", "critic_opt",
            "log_alpha", "alpha_opt", "buffer", "n_updates", "train_values",
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
        """Rebuild the trained actor for evaluation (deterministic: the tanh of the mean)."""
        box = box_space(action_space)
        act_size = int(np.prod(box.shape))
        actor = SquashedGaussianActor(
            obs_dim(observation_space), act_size, tuple(saved.hyperparams["net_arch"])
        )
        actor.to(device).load_state_dict(saved.state_dicts["actor"])
        actor.eval()

        def policy(obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
            obs_t = obs_to_tensor(obs, observation_space, device)
            action, _ = actor(obs_t, None if deterministic else generator)
            return scale_action(action, box)

        return policy
