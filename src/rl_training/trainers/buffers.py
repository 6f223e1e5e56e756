"""Experience storage: ``RolloutBuffer`` (PPO, A2C) and ``ReplayBuffer`` (DQN, SAC, TD3).

Everything a network reads lives on the training device; rewards and episode ends
come from the environments as numpy arrays and stay on the host until one copy.
"""

from __future__ import annotations

import numpy as np
import torch


class RolloutBuffer:
    """One rollout of ``n_steps`` x ``num_envs`` transitions, preallocated.

    Args:
        n_steps: Capacity in vector steps.
        num_envs: Parallel environments.
        obs_size: Flat observation size.
        action_shape: Shape of one env's action (``()`` for Discrete).
        discrete: Store actions as ``long`` (else ``float32``).
        device: Where observations, actions, log-probs and values live.
    """

    def __init__(
        self,
        n_steps: int,
        num_envs: int,
        obs_size: int,
        action_shape: tuple[int, ...],
        discrete: bool,
        device: torch.device,
    ) -> None:
        self.device = device
        self.obs = torch.zeros((n_steps, num_envs, obs_size), device=device)
        action_dtype = torch.long if discrete else torch.float32
        self.actions = torch.zeros(
            (n_steps, num_envs, *action_shape), dtype=action_dtype, device=device
        )
        self.log_probs = torch.zeros((n_steps, num_envs), device=device)
        self.values = torch.zeros((n_steps, num_envs), device=device)
        self.rewards = np.zeros((n_steps, num_envs), dtype=np.float32)
        self.dones = np.zeros((n_steps, num_envs), dtype=np.float32)
        """1 where the transition ended an episode (terminated or truncated)."""

    def add(
        self,
        t: int,
        obs: torch.Tensor,
        action: torch.Tensor,
        log_prob: torch.Tensor,
        value: torch.Tensor,
        reward: np.ndarray,
        done: np.ndarray,
    ) -> None:
        """Store vector step ``t``."""
        self.obs[t] = obs
        self.actions[t] = action
        self.log_probs[t] = log_prob
        self.values[t] = value
        self.rewards[t] = reward
        self.dones[t] = done

    def advantages(
        self, length: int, last_value: torch.Tensor, gamma: float, gae_lambda: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE(gamma, lambda) advantages and returns of the first ``length`` steps.

        Schulman et al. 2016 (arXiv:1506.02438), eq. 16. ``rewards`` already hold
        ``gamma * V(final_obs)`` for truncated episodes, so an episode end never
        bootstraps across the reset. Computed on the host in one pass: one copy of
        the values there and one copy of the result back, instead of a kernel per step.
        """
        values = torch.cat([self.values[:length], last_value.unsqueeze(0)]).cpu().numpy()
        rewards, not_done = self.rewards[:length], 1.0 - self.dones[:length]
        deltas = rewards + gamma * values[1:] * not_done - values[:-1]
        decay = gamma * gae_lambda * not_done
        advantages = np.empty_like(deltas)
        running = np.zeros(deltas.shape[1], dtype=np.float32)
        for t in range(length - 1, -1, -1):
            running = deltas[t] + decay[t] * running
            advantages[t] = running
        adv = torch.from_numpy(advantages).to(self.device, non_blocking=True)
        return adv, adv + self.values[:length]
