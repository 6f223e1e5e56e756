"""Observation and reward normalisation by running statistics (SB3's ``VecNormalize``).

``normalize_obs``: each observation entry becomes ``(obs - mean) / sqrt(var + 1e-8)``,
clipped to ``[-10, 10]``, with the mean and variance of every observation seen in
training so far. ``normalize_reward``: each reward is divided by the standard
deviation of the discounted return (``return = gamma * return + reward``, reset at
each episode end), clipped to ``[-10, 10]``; ``episode/return`` stays the env's own.

Statistics are updated in training only, and frozen everywhere else: the
observation statistics are part of model files (``load_policy``, ``evaluate`` and
videos apply them to the raw observations the env gives) and both are part of
checkpoints (a resumed run goes on with them). Under torchrun every rank's batch
enters one update (an all-reduce of the batch's count, sum and sum of squares), so
the ranks keep the same statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

EPSILON = 1e-8
"""Added to the variance before its square root."""
CLIP = 10.0
"""Normalised observations and rewards are clipped to ``[-CLIP, CLIP]``."""

Merge = Callable[[torch.Tensor], None]
"""Sums a tensor over the ranks, in place (``None``: one process)."""


class RunningMeanStd(nn.Module):
    """Mean and variance of every sample so far, by Chan et al.'s parallel update (the
    same as SB3's ``RunningMeanStd``; the count starts at 1e-4)."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor, merge: Merge | None = None) -> None:
        """Add a batch ``(n, size)`` (every rank's, through ``merge``)."""
        x = batch.to(torch.float64).reshape(batch.shape[0], -1)
        n = torch.full((1,), float(x.shape[0]), dtype=torch.float64, device=x.device)
        moments = torch.cat([n, x.sum(0), x.square().sum(0)])
        if merge is not None:
            merge(moments)
        size = self.mean.shape[0]
        total = moments[0]
        batch_mean = moments[1 : size + 1] / total
        batch_var = (moments[size + 1 :] / total - batch_mean.square()).clamp_(min=0.0)
        delta = batch_mean - self.mean
        count = self.count + total
        m2 = self.var * self.count + batch_var * total + delta.square() * self.count * total / count
        self.mean.add_(delta * total / count)
        self.var.copy_(m2 / count)
        self.count.copy_(count)


class ObsNormalizer(RunningMeanStd):
    """:class:`RunningMeanStd` of flat observations, and their normalisation."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``(n, size)`` float32 observations normalised and clipped."""
        scaled = (obs - self.mean) / torch.sqrt(self.var + EPSILON)
        return scaled.clamp_(-CLIP, CLIP).to(torch.float32)

    def numpy(self, obs: Any) -> np.ndarray:
        """A numpy batch of raw observations, normalised (``float32`` ``(n, size)``)."""
        array = np.asarray(obs, dtype=np.float64).reshape(len(obs), -1)
        mean, var = self.mean.cpu().numpy(), self.var.cpu().numpy()
        scaled: np.ndarray = np.clip((array - mean) / np.sqrt(var + EPSILON), -CLIP, CLIP)
        return scaled.astype(np.float32)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> ObsNormalizer:
        """An :class:`ObsNormalizer` holding saved statistics."""
        normalizer = cls(int(state["mean"].shape[0]))
        normalizer.load_state_dict(state)
        return normalizer


class RewardNormalizer:
    """Rewards divided by the running standard deviation of the discounted return."""

    def __init__(self, num_envs: int, gamma: float) -> None:
        self.gamma = gamma
        self.stats = RunningMeanStd(1)
        self.returns = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, reward: np.ndarray, done: np.ndarray, merge: Merge | None) -> np.ndarray:
        """Update with this step's rewards; return them normalised (``float32``)."""
        self.returns = self.returns * self.gamma + reward
        self.stats.update(torch.from_numpy(self.returns[:, None]), merge)
        scale = float(torch.sqrt(self.stats.var[0] + EPSILON))
        normalized = np.clip(reward / scale, -CLIP, CLIP).astype(np.float32)
        self.returns[done] = 0.0
        return normalized

    def state_dict(self) -> dict[str, Any]:
        """The return statistics (the returns under way restart with the envs)."""
        return {k: v.clone() for k, v in self.stats.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.stats.load_state_dict(state)
        self.returns[:] = 0.0


__all__ = ["ObsNormalizer", "RewardNormalizer", "RunningMeanStd"]
