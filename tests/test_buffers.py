"""ReplayBuffer sampling: minibatches drawn together are the ones drawn one by one."""

from __future__ import annotations

import numpy as np
import torch

from rl_training.trainers.buffers import ReplayBuffer


def test_batches_at_once_are_the_same_draws_as_one_call_each():
    buffer = ReplayBuffer(50, 3, (), True, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(10):  # 10 vector steps of 4 envs
        obs = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))
        next_obs = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))
        buffer.add(
            obs,
            next_obs,
            torch.from_numpy(rng.integers(0, 2, 4)),
            rng.standard_normal(4),
            rng.integers(0, 2, 4).astype(bool),
            np.zeros(4, dtype=bool),
        )
    together = buffer.sample(8, torch.Generator().manual_seed(3), batches=5)
    g = torch.Generator().manual_seed(3)
    one_by_one = [buffer.sample(8, g) for _ in range(5)]
    for name in together._fields:
        stacked = torch.stack([getattr(batch, name) for batch in one_by_one])
        assert torch.equal(getattr(together, name), stacked), name
    assert together.obs.shape == (5, 8, 3)
    assert together.rewards.shape == together.terminations.shape == (5, 8)
    # the draws span the buffer, not one row
    assert len({tuple(row) for row in together.obs.reshape(-1, 3).tolist()}) > 10
