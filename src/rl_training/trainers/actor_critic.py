"""The actor-critic network of the on-policy trainers (PPO, A2C).

Separate actor and critic MLPs (Tanh, orthogonal init; policy head gain 0.01, value
head gain 1), as in Stable-Baselines3's ``MlpPolicy``. Discrete actions take a
categorical policy; Box actions a diagonal Gaussian with a state-independent
``log_std``, clipped to the action bounds only when sent to the environment.

Log-probabilities and entropies are written out rather than built through
``torch.distributions``, whose per-call validation and object construction cost
more than the tiny networks themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.trainers.buffers import RolloutBuffer
from rl_training.trainers.common import SavedModel, mlp, obs_dim, obs_to_tensor

if TYPE_CHECKING:
    from rl_training.trainers import Policy, Session

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class ActorCritic(nn.Module):
    """Policy and value function for a Box or Discrete action space."""

    low: torch.Tensor
    """Lower bounds of a Box action space (a buffer: it follows the module's device)."""
    high: torch.Tensor
    """Upper bounds of a Box action space."""

    def __init__(
        self,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        net_arch: Sequence[int],
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        n_in = obs_dim(observation_space)
        if isinstance(action_space, gym.spaces.Discrete):
            n_out = int(action_space.n)
            self.action_shape: tuple[int, ...] = ()
        elif isinstance(action_space, gym.spaces.Box):
            n_out = int(np.prod(action_space.shape))
            self.action_shape = tuple(action_space.shape)
            self.log_std = nn.Parameter(torch.full((n_out,), float(log_std_init)))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ValueError(f"action space {action_space} is not supported (Discrete or Box)")
        self.actor = mlp(n_in, net_arch, n_out, out_gain=0.01)
        self.critic = mlp(n_in, net_arch, 1, out_gain=1.0)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(obs), shape ``(batch,)``."""
        value: torch.Tensor = self.critic(obs)
        return value.squeeze(-1)

    def act(
        self, obs: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample actions; return ``(action, log_prob, value)``."""
        return self._sample(self.actor(obs), self.value(obs), generator)

    def rollout_act(self) -> Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, ...]]:
        """:meth:`act` for a rollout, with actor and critic fused into one network.

        The two MLPs read the same input, so they run as one of twice the width:
        the first layers concatenated, the later ones block-diagonal. Half the
        kernel launches per environment step; the result is the same up to float
        rounding. The weights are a snapshot: take a new one after each update.
        """
        weights = []
        with torch.no_grad():
            for i, (a, c) in enumerate(zip(self.actor.linears, self.critic.linears, strict=True)):
                if i == 0:
                    w = torch.cat([a.weight, c.weight])
                else:
                    w = torch.block_diag(a.weight, c.weight)  # type: ignore[no-untyped-call]
                weights.append((w, torch.cat([a.bias, c.bias])))
        *hidden, (w_out, b_out) = weights
        n_actor = self.actor.linears[-1].out_features
        linear, sample = nn.functional.linear, self._sample

        def act(obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
            x = obs
            for w, b in hidden:
                x = torch.tanh(linear(x, w, b))
            out = linear(x, w_out, b_out)
            return sample(out[:, :n_actor], out[:, n_actor], generator)

        return act

    def _sample(
        self, out: torch.Tensor, value: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.discrete:
            log_probs = torch.log_softmax(out, dim=-1)
            # Gumbel-max sampling: one draw and an argmax, cheaper than torch.multinomial
            uniform = torch.rand(out.shape, generator=generator, device=out.device)
            action = (log_probs - torch.log(-torch.log(uniform))).argmax(-1, keepdim=True)
            return action.squeeze(-1), log_probs.gather(-1, action).squeeze(-1), value
        noise = torch.randn(out.shape, generator=generator, device=out.device)
        action = out + noise * self.log_std.exp()
        log_prob = (-0.5 * noise.square() - self.log_std - _LOG_SQRT_2PI).sum(-1)
        return action.reshape(-1, *self.action_shape), log_prob, value

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_prob, entropy, value)`` of ``actions`` under the current policy."""
        out = self.actor(obs)
        if self.discrete:
            log_probs = torch.log_softmax(out, dim=-1)
            log_prob = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            return log_prob, entropy, self.value(obs)
        actions = actions.reshape(out.shape)
        log_std = self.log_std
        z = (actions - out) * torch.exp(-log_std)
        log_prob = (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)
        entropy = (0.5 + _LOG_SQRT_2PI + log_std).sum().expand(out.shape[0])
        return log_prob, entropy, self.value(obs)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The mode of the policy: argmax for Discrete, the mean for Box."""
        out: torch.Tensor = self.actor(obs)
        if self.discrete:
            return out.argmax(-1)
        return out.reshape(-1, *self.action_shape)

    def to_env(self, action: torch.Tensor) -> np.ndarray:
        """Actions as the environment takes them (Box actions clipped to its bounds)."""
        if not self.discrete:
            action = torch.clamp(action, self.low, self.high)
        return action.cpu().numpy()


def collect_rollout(
    session: Session,
    agent: ActorCritic,
    buffer: RolloutBuffer,
    obs: torch.Tensor,
    length: int,
    steps: int,
) -> tuple[torch.Tensor, int]:
    """Step every env ``length`` times with the current policy, filling ``buffer``.

    Truncated episodes get ``gamma * V(final_obs)`` added to their last reward, so a
    time limit is not learned as a terminal state (as SB3 does); episode statistics
    see the environment's own rewards. Returns the next observation and step count.
    """
    envs, device, gamma = session.envs, session.device, session.hp.gamma
    obs_space = envs.single_observation_space
    n_envs = session.hp.num_envs
    act = agent.rollout_act()
    for t in range(length):
        with torch.no_grad():
            action, logp, value = act(obs, session.generator)
        next_raw, reward, terminated, truncated, infos = envs.step(agent.to_env(action))
        steps += n_envs
        done = terminated | truncated
        stored_reward = reward
        if truncated.any():
            final = np.stack([infos["final_obs"][i] for i in np.flatnonzero(truncated)])
            with torch.no_grad():
                final_values = agent.value(obs_to_tensor(final, obs_space, device)).cpu().numpy()
            stored_reward = reward.copy()
            stored_reward[truncated] += gamma * final_values
        buffer.add(t, obs, action, logp, value, stored_reward, done)
        session.episodes.update(reward, done, steps)
        obs = obs_to_tensor(next_raw, obs_space, device)
    return obs, steps


def actor_critic_policy(
    saved: SavedModel, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> Policy:
    """An :class:`ActorCritic` from a saved model, as an evaluation policy (PPO and A2C)."""
    agent = ActorCritic(observation_space, action_space, saved.hyperparams["net_arch"])
    agent.load_state_dict(saved.state_dicts["agent"])
    agent.eval()
    device = torch.device("cpu")

    def policy(obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        obs_t = obs_to_tensor(obs, observation_space, device)
        if deterministic:
            return agent.to_env(agent.deterministic_action(obs_t))
        return agent.to_env(agent.act(obs_t, generator)[0])

    return policy
