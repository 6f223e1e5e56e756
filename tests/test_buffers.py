"""ReplayBuffer sampling: minibatches drawn together are the ones drawn one by one."""

from __future__ import annotations

import io

import numpy as np
import torch

from rl_training.trainers.buffers import ReplayBuffer


def test_batches_at_once_are_the_same_draws_as_one_call_each():
    """Drawing several minibatches in one call gives the same transitions as one call each."""
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


def _fill(buffer: ReplayBuffer, steps: int, envs: int, seed: int) -> list[tuple]:
    """Add ``steps`` vector steps of random transitions; return them in order."""
    rng = np.random.default_rng(seed)
    added = []
    for _ in range(steps):
        row = (
            torch.from_numpy(rng.standard_normal((envs, 3)).astype(np.float32)),
            torch.from_numpy(rng.standard_normal((envs, 3)).astype(np.float32)),
            torch.from_numpy(rng.uniform(-1, 1, (envs, 2)).astype(np.float32)),
            rng.standard_normal(envs),
            rng.integers(0, 2, envs).astype(bool),
            rng.integers(0, 2, envs).astype(bool),
        )
        buffer.add(*row)
        added.append(row)
    return added


def test_rows_wrap_around_and_both_write_paths_store_the_same():
    """A full buffer overwrites its oldest rows, and the CPU's and other devices' writes agree."""
    # 7 steps of 3 envs into 10 rows: the 4th step wraps (rows 9, 0, 1), later ones
    # overwrite the oldest. The CPU writes through numpy views; other devices index
    # the tensors: with the views switched off the same code path runs here.
    host, indexed = (ReplayBuffer(10, 3, (2,), False, torch.device("cpu")) for _ in range(2))
    indexed._host = None
    added = _fill(host, 7, 3, seed=1)
    _fill(indexed, 7, 3, seed=1)
    assert (host.pos, host.size) == (indexed.pos, indexed.size) == (1, 10)
    for name in ("obs", "next_obs", "actions", "scalars"):
        assert torch.equal(getattr(host, name), getattr(indexed, name)), name
    # the last transition (env 2 of step 7) sits at row 0, its predecessor at row 9
    obs, next_obs, actions, rewards, terminated, truncated = added[-1]
    assert torch.equal(host.obs[0], obs[2]) and torch.equal(host.next_obs[0], next_obs[2])
    assert torch.equal(host.actions[0], actions[2])
    expected = [np.float32(rewards[2]), float(terminated[2]), float(truncated[2])]
    assert host.scalars[0].tolist() == expected
    assert torch.equal(host.obs[9], obs[1])


def test_a_checkpoint_holds_the_filled_rows_without_copying_them():
    """state_dict's tensors share the buffer's memory (a checkpoint of a large buffer
    needs no second copy of it), yet torch.save writes only the filled rows, and they
    come back whole into a new buffer."""
    buffer = ReplayBuffer(10_000, 64, (), True, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(25):  # 100 transitions of 4 envs
        buffer.add(
            torch.from_numpy(rng.standard_normal((4, 64)).astype(np.float32)),
            torch.from_numpy(rng.standard_normal((4, 64)).astype(np.float32)),
            torch.from_numpy(rng.integers(0, 2, 4)),
            rng.standard_normal(4),
            np.zeros(4, dtype=bool),
            np.zeros(4, dtype=bool),
        )
    state = buffer.state_dict()
    assert state["obs"].data_ptr() == buffer.obs.data_ptr() and state["obs"].shape == (100, 64)
    saved = io.BytesIO()
    torch.save(state, saved)
    assert saved.tell() < 100_000  # 2 x 100 x 64 float32 rows: 51 KB; all 10,000: 5 MB
    saved.seek(0)
    restored = ReplayBuffer(10_000, 64, (), True, torch.device("cpu"))
    restored.load_state_dict(torch.load(saved, weights_only=True))
    for name in ("obs", "next_obs", "actions", "scalars"):
        assert torch.equal(getattr(restored, name), getattr(buffer, name))
    assert (restored.pos, restored.size) == (buffer.pos, buffer.size)
