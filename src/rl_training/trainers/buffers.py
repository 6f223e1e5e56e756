"""Experience storage: ``RolloutBuffer`` (PPO, A2C) and ``ReplayBuffer`` (DQN, SAC, TD3).

Everything a network reads lives on the training device; rewards and episode ends
come from the environments as numpy arrays and stay on the host until one copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from rl_training.trainers.envs import EnvStepper
from rl_training.trainers.observations import ObsLayout


class RolloutBuffer:
    """One rollout of ``n_steps`` x ``num_envs`` transitions, preallocated.

    Args:
        n_steps: Capacity in vector steps.
        num_envs: Parallel environments.
        obs: How observations are kept (their shape and dtype: ``uint8`` images).
        action_shape: Shape of one env's action (``()`` for Discrete).
        discrete: Store actions as ``long`` (else ``float32``).
        device: Where observations, actions, log-probs and values live.
    """

    def __init__(
        self,
        n_steps: int,
        num_envs: int,
        obs: ObsLayout,
        action_shape: tuple[int, ...],
        discrete: bool,
        device: torch.device,
    ) -> None:
        self.device = device
        self.obs = torch.zeros(
            (n_steps, num_envs, *obs.shape), dtype=obs.torch_dtype, device=device
        )
        action_dtype = torch.long if discrete else torch.float32
        self.actions = torch.zeros(
            (n_steps, num_envs, *action_shape), dtype=action_dtype, device=device
        )
        self.log_probs = torch.zeros((n_steps, num_envs), device=device)
        self.values = torch.zeros((n_steps, num_envs), device=device)
        self.rewards = np.zeros((n_steps, num_envs), dtype=np.float32)
        self.dones = np.zeros((n_steps, num_envs), dtype=np.float32)
        """1 where the transition ended an episode (terminated or truncated)."""
        # On the CPU, steps are written through numpy views of the same memory (see
        # ReplayBuffer): cheaper than indexing the tensors.
        self._host = (
            (self.obs.numpy(), self.actions.numpy(), self.log_probs.numpy(), self.values.numpy())
            if device.type == "cpu"
            else None
        )

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
        if self._host is not None:
            host_obs, host_actions, host_log_probs, host_values = self._host
            host_obs[t] = obs.numpy()
            host_actions[t] = action.numpy()
            host_log_probs[t] = log_prob.numpy()
            host_values[t] = value.numpy()
        else:
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
        Non-finite rewards or values give non-finite advantages without a numpy
        warning: the run's loss check names them (``NonFiniteError``).
        """
        values = torch.cat([self.values[:length], last_value.unsqueeze(0)]).cpu().numpy()
        rewards, not_done = self.rewards[:length], 1.0 - self.dones[:length]
        with np.errstate(invalid="ignore", over="ignore"):
            deltas = rewards + gamma * values[1:] * not_done - values[:-1]
            decay = gamma * gae_lambda * not_done
            advantages = np.empty_like(deltas)
            running = np.zeros(deltas.shape[1], dtype=np.float32)
            for t in range(length - 1, -1, -1):
                running = deltas[t] + decay[t] * running
                advantages[t] = running
        adv = torch.from_numpy(advantages).to(self.device, non_blocking=True)
        return adv, adv + self.values[:length]


class ReplayBatch(NamedTuple):
    """A sampled minibatch (all on the buffer's device)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminations: torch.Tensor
    """1.0 where the episode really ended: no bootstrapping from ``next_obs``."""


class ReplayBuffer:
    """A ring buffer of transitions on the training device, sampled uniformly.

    Terminations and truncations are kept apart: only a termination stops
    bootstrapping, while a truncated transition (a time limit) keeps its real
    ``next_obs`` (gymnasium's ``final_obs``) and is bootstrapped from it.

    Args:
        capacity: Transitions kept (the oldest are overwritten).
        obs_size: Flat observation size.
        action_shape: Shape of one action (``()`` for Discrete).
        discrete: Store actions as ``long`` (else ``float32``).
        device: Where everything lives.
    """

    def __init__(
        self,
        capacity: int,
        obs_size: int,
        action_shape: tuple[int, ...],
        discrete: bool,
        device: torch.device,
    ) -> None:
        self._allocate(capacity, action_shape, discrete, device)
        self.obs = torch.zeros((capacity, obs_size), device=device)
        self.next_obs = torch.zeros((capacity, obs_size), device=device)
        # On the CPU, rows are written through numpy views of the same memory: ~1 us
        # a row each, where indexing a tensor costs ~4 us (a step adds four of them).
        self._host = (
            (self.obs.numpy(), self.next_obs.numpy(), self.actions.numpy(), self.scalars.numpy())
            if device.type == "cpu"
            else None
        )

    def _allocate(
        self, capacity: int, action_shape: tuple[int, ...], discrete: bool, device: torch.device
    ) -> None:
        """What every replay buffer holds besides observations."""
        self.capacity = capacity
        self.device = device
        action_dtype = torch.long if discrete else torch.float32
        self.actions = torch.zeros((capacity, *action_shape), dtype=action_dtype, device=device)
        # reward, terminated, truncated side by side: one host-to-device copy per add
        self.scalars = torch.zeros((capacity, 3), device=device)
        self.pos = 0
        """Next row to write."""
        self.size = 0
        """Rows filled."""

    def add(
        self,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Append one vector step (one row per environment)."""
        n = obs.shape[0]
        end = self.pos + n
        wraps = end > self.capacity  # then the rows wrap around the end
        if self._host is not None:
            at: slice | np.ndarray = (
                np.arange(self.pos, end) % self.capacity if wraps else slice(self.pos, end)
            )
            host_obs, host_next_obs, host_actions, host_scalars = self._host
            host_obs[at] = obs.numpy()
            host_next_obs[at] = next_obs.numpy()
            host_actions[at] = actions.numpy()
            host_scalars[at, 0] = rewards
            host_scalars[at, 1] = terminated
            host_scalars[at, 2] = truncated
        else:
            scalars = torch.from_numpy(
                np.stack([rewards, terminated, truncated], axis=1).astype(np.float32, copy=False)
            ).to(self.device, non_blocking=True)
            rows: slice | torch.Tensor = (
                torch.arange(self.pos, end, device=self.device) % self.capacity
                if wraps
                else slice(self.pos, end)
            )
            self.obs[rows] = obs
            self.next_obs[rows] = next_obs
            self.actions[rows] = actions
            self.scalars[rows] = scalars
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def collect(self, stepper: EnvStepper, action: torch.Tensor, env_action: np.ndarray) -> None:
        """Step the environments with ``env_action`` and store the transitions, with
        ``action`` as the trainer learns it (e.g. in ``[-1, 1]`` before scaling)."""
        obs = stepper.obs
        next_obs, reward, terminated, truncated = stepper.step(env_action)
        self.add(obs, next_obs, action, reward, terminated, truncated)

    def state_dict(self) -> dict[str, Any]:
        """The filled rows and where the next one goes: views of the buffer's memory
        (:func:`filled_rows`, no copy), to be saved before the buffer changes."""
        return {
            "obs": filled_rows(self.obs, self.size),
            "next_obs": filled_rows(self.next_obs, self.size),
            "actions": filled_rows(self.actions, self.size),
            "scalars": filled_rows(self.scalars, self.size),
            "pos": self.pos,
            "size": self.size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into this buffer (of the same capacity).

        Raises:
            ValueError: the state holds more rows than this buffer's capacity.
        """
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(
                f"replay buffer state holds {size} transitions; this buffer takes {self.capacity}"
            )
        with torch.no_grad():
            for name in ("obs", "next_obs", "actions", "scalars"):
                getattr(self, name)[:size] = state[name]
        self.pos, self.size = int(state["pos"]), size

    def sample(
        self, batch_size: int, generator: torch.Generator, batches: int | None = None
    ) -> ReplayBatch:
        """``batch_size`` transitions drawn uniformly with replacement, gathered in one pass.

        With ``batches``, that many minibatches at once, each tensor shaped
        ``(batches, batch_size, ...)``: the same draws, in the same order, as that many
        calls without it.
        """
        shape = (batch_size,) if batches is None else (batches, batch_size)
        idx = torch.randint(0, self.size, shape, generator=generator, device=self.device)
        scalars = rows_at(self.scalars, idx)
        return ReplayBatch(
            obs=self._obs_at(idx),
            actions=rows_at(self.actions, idx),
            rewards=scalars[..., 0],
            next_obs=self._next_obs(idx),
            terminations=scalars[..., 1],
        )

    def _obs_at(self, idx: torch.Tensor) -> torch.Tensor:
        """The observations of the transitions at rows ``idx``."""
        return rows_at(self.obs, idx)

    def _next_obs(self, idx: torch.Tensor) -> torch.Tensor:
        """The next observations of the transitions at rows ``idx``."""
        return rows_at(self.next_obs, idx)


class ImageReplayBuffer(ReplayBuffer):
    """A replay buffer of ``uint8`` observations (images, packed Dicts), each kept once.

    A transition's next observation is the next row of the same environment (rows
    are written ``num_envs`` at a time), so only ``obs`` is stored, not ``next_obs``
    as well: half the memory of :class:`ReplayBuffer`. Where the next row is not the
    transition's successor, the real next observation is kept aside:

    - a truncated transition (the next row starts a new episode) keeps its final
      observation in a side store of ``capacity // 16 + num_envs`` rows; should
      more truncations than that be held at once, the oldest lose it and are
      learned as terminations. (A terminated transition needs none: it is not
      bootstrapped.)
    - the newest ``num_envs`` rows (their successors are not written yet) keep
      their next observations in the side store's last ``num_envs`` rows.

    Samples, their order and :class:`ReplayBatch` are those of :class:`ReplayBuffer`.
    """

    def __init__(
        self,
        capacity: int,
        obs: ObsLayout,
        num_envs: int,
        action_shape: tuple[int, ...],
        discrete: bool,
        device: torch.device,
    ) -> None:
        self._allocate(capacity, action_shape, discrete, device)
        self.num_envs = num_envs
        self._allocate_obs(capacity, obs)
        self.finals_kept = capacity // 16 + num_envs
        """Truncated transitions whose final observations are kept at once."""
        #: Final observations (``finals_kept`` rows), then the newest rows' next ones.
        self.side = torch.zeros(
            (self.finals_kept + num_envs, *obs.shape), dtype=obs.torch_dtype, device=device
        )
        self.side_row = torch.full((capacity,), -1, dtype=torch.long, device=device)
        """Per row: where in :attr:`side` its next observation is, or -1 (the next row)."""
        self.side_owner = torch.full((self.finals_kept,), -1, dtype=torch.long, device=device)
        self.next_side = 0
        """The side row the next truncation takes."""
        self._host = None

    def _allocate_obs(self, capacity: int, obs: ObsLayout) -> None:
        self.obs = torch.zeros((capacity, *obs.shape), dtype=obs.torch_dtype, device=self.device)

    def _check_obs(self, obs: torch.Tensor) -> Any:
        """Refuse observations this buffer cannot keep, before anything is stored;
        what it finds goes to :meth:`_store_obs`."""
        return None

    def _store_obs(self, rows: torch.Tensor, obs: torch.Tensor, checked: Any) -> None:
        self.obs[rows] = obs

    def _obs_state(self) -> dict[str, Any]:
        return {"obs": filled_rows(self.obs, self.size)}

    def _load_obs_state(self, state: Mapping[str, Any]) -> None:
        self.obs[: int(state["size"])] = state["obs"]

    def add(
        self,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Append one vector step (one row per environment, ``num_envs`` rows)."""
        checked = self._check_obs(obs)
        n, cap = obs.shape[0], self.capacity
        rows = torch.arange(self.pos, self.pos + n, device=self.device) % cap
        # The rows written before these now have their successors: forget their
        # "newest" side entries.
        previous = (rows - n) % cap
        newest = self.side_row[previous] >= self.finals_kept
        self.side_row[previous] = torch.where(newest, -1, self.side_row[previous])
        # The rows about to be overwritten lose their final observations
        old = self.side_row[rows]
        kept = (old >= 0) & (old < self.finals_kept)
        self.side_owner[old[kept]] = -1
        self._store_obs(rows, obs, checked)
        self.actions[rows] = actions
        scalars = np.stack([rewards, terminated, truncated], axis=1).astype(np.float32)
        side = torch.arange(self.finals_kept, self.finals_kept + n)
        for i in np.flatnonzero(truncated & ~terminated):  # rare: a time limit
            slot = self.next_side
            self.next_side = (slot + 1) % self.finals_kept
            owner = int(self.side_owner[slot])
            if owner >= 0:  # evicted: that transition is learned as a termination
                self.side_row[owner] = -1
                self.scalars[owner, 1] = 1.0
            self.side_owner[slot] = int(rows[i])
            self.side[slot] = next_obs[i]
            side[i] = slot
        self.side[self.finals_kept :] = next_obs
        self.side_row[rows] = side.to(self.device)
        self.scalars[rows] = torch.from_numpy(scalars).to(self.device, non_blocking=True)
        self.pos = (self.pos + n) % cap
        self.size = min(self.size + n, cap)

    def state_dict(self) -> dict[str, Any]:
        """Every stored tensor (views, as :meth:`ReplayBuffer.state_dict`) and the
        positions."""
        return {
            **self._obs_state(),
            "actions": filled_rows(self.actions, self.size),
            "scalars": filled_rows(self.scalars, self.size),
            # the final observations that rows still refer to, and the newest rows' next
            "side_finals": filled_rows(self.side, self._finals_in_use()),
            "side_newest": stored_rows(self.side, self.finals_kept, len(self.side)),
            "side_row": filled_rows(self.side_row, self.size),
            "side_owner": self.side_owner,
            "next_side": self.next_side,
            "pos": self.pos,
            "size": self.size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into this buffer (of the same capacity).

        Raises:
            ValueError: the state holds more rows than this buffer's capacity, or
                another number of environments.
        """
        size = int(state["size"])
        if "side" in state:  # written before the side store was saved in its two parts
            finals, newest = state["side"][: self.finals_kept], state["side"][self.finals_kept :]
        else:
            finals, newest = state["side_finals"], state["side_newest"]
        if size > self.capacity or newest.shape != self.side[self.finals_kept :].shape:
            raise ValueError(
                f"replay buffer state holds {size} transitions of {newest.shape[0]} "
                f"environments; this buffer takes {self.capacity} of {self.num_envs}"
            )
        with torch.no_grad():
            self._load_obs_state(state)
            for name in ("actions", "scalars", "side_row"):
                getattr(self, name)[:size] = state[name]
            self.side[: len(finals)] = finals
            self.side[self.finals_kept :] = newest
            self.side_owner.copy_(state["side_owner"])
        self.next_side = int(state["next_side"])
        self.pos, self.size = int(state["pos"]), size

    def _finals_in_use(self) -> int:
        """Side rows up to the last final observation a row still refers to."""
        owned = torch.nonzero(self.side_owner >= 0)
        return int(owned.max()) + 1 if len(owned) else 0

    def _next_obs(self, idx: torch.Tensor) -> torch.Tensor:
        """The next rows of the same environment, or the side store's."""
        side = rows_at(self.side_row, idx)
        successors = self._obs_at((idx + self.num_envs) % self.capacity)
        finals = rows_at(self.side, side.clamp(min=0))
        # each row taken from one of the two by its index: a torch.where broadcast over
        # the images goes element by element (1.3 ms for 32 Atari stacks, this ~0.1 ms)
        rows = torch.arange(idx.numel(), device=self.device).view(idx.shape)
        both = torch.cat([successors.flatten(0, idx.dim() - 1), finals.flatten(0, idx.dim() - 1)])
        return rows_at(both, torch.where(side >= 0, rows + idx.numel(), rows))


class FrameReplayBuffer(ImageReplayBuffer):
    """An :class:`ImageReplayBuffer` of frame-stacked observations (Atari's 4 x 84 x 84)
    that keeps each frame once: a quarter of its memory and of its checkpoints.

    An observation of ``k`` stacked frames (stacked on its first axis) is either the
    same environment's previous one shifted by a new frame, or, at an episode's
    start, one frame repeated ``k`` times (gymnasium's ``FrameStackObservation``
    pads with the reset frame). So a row keeps its newest frame and whether it is a
    shift; its stack is rebuilt from the rows before it of the same environment. The
    frames live in a ring of ``capacity + (k - 1) * num_envs`` slots, so the frames a
    kept row's stack reaches back to are never overwritten before the row itself.
    Each observation is checked as it is added; one that is neither (not a stack of
    this kind) raises ``ValueError``. Samples and their order are those of
    :class:`ImageReplayBuffer`.
    """

    def _allocate_obs(self, capacity: int, obs: ObsLayout) -> None:
        self.stack = obs.shape[0]
        """Frames in an observation."""
        self.frame_capacity = capacity + (self.stack - 1) * self.num_envs
        self.frames = torch.zeros(
            (self.frame_capacity, *obs.shape[1:]), dtype=obs.torch_dtype, device=self.device
        )
        #: Per frame slot: its observation is the previous one of its env, shifted.
        self.shifted = torch.zeros(self.frame_capacity, dtype=torch.bool, device=self.device)
        self.added = 0
        """Rows counted so far: the row counted ``c`` has frame slot
        ``c % frame_capacity``, the newest row (at ``pos - 1``) is counted ``added - 1``."""
        self._last = torch.zeros((self.num_envs, *obs.shape), dtype=obs.torch_dtype,
                                 device=self.device)  # fmt: skip
        """The newest observation of each environment (once ``added``)."""

    def _stacks(self, slots: torch.Tensor) -> torch.Tensor:
        """The observations whose newest frames are at ``slots``, ``(*slots.shape, k, ...)``."""
        back = [slots]
        for _ in range(self.stack - 1):
            earlier = back[0]
            before = (earlier - self.num_envs) % self.frame_capacity
            back.insert(0, torch.where(rows_at(self.shifted, earlier), before, earlier))
        return rows_at(self.frames, torch.stack(back, dim=-1))

    def _obs_at(self, idx: torch.Tensor) -> torch.Tensor:
        # the row's count: the newest one congruent to it modulo the capacity
        count = self.added - 1 - (self.pos - 1 - idx) % self.capacity
        return self._stacks(count % self.frame_capacity)

    def _check_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Per environment: whether ``obs`` is its previous observation shifted by a
        frame (else it is one frame repeated).

        Raises:
            ValueError: it is neither (before anything is stored).
        """
        shifted = []  # per environment: torch.equal, ~5 us, a fifth of a vectorised test
        for i, stack in enumerate(obs):
            shift = self.added > 0 and torch.equal(stack[:-1], self._last[i, 1:])
            if not shift and not all(torch.equal(frame, stack[-1]) for frame in stack[:-1]):
                raise ValueError(
                    f"a frame-stacked replay buffer got an observation of shape "
                    f"{tuple(obs.shape[1:])} that is neither its previous one shifted by a "
                    f"frame nor one frame repeated {self.stack} times"
                )
            shifted.append(shift)
        return torch.tensor(shifted, device=self.device)

    def _store_obs(self, rows: torch.Tensor, obs: torch.Tensor, checked: Any) -> None:
        start, n = self.added % self.frame_capacity, obs.shape[0]
        slots: slice | torch.Tensor = slice(start, start + n)  # a copy, not an index_put
        if start + n > self.frame_capacity:  # around the ring's end
            slots = torch.arange(start, start + n, device=self.device) % self.frame_capacity
        self.frames[slots] = obs[:, -1]
        self.shifted[slots] = checked
        self._last.copy_(obs)
        self.added += obs.shape[0]

    def _obs_state(self) -> dict[str, Any]:
        filled = min(self.added, self.frame_capacity)
        return {
            "frames": filled_rows(self.frames, filled),
            "shifted": filled_rows(self.shifted, filled),
            "added": self.added,
        }

    def _load_obs_state(self, state: Mapping[str, Any]) -> None:
        if "frames" in state:
            filled = state["frames"].shape[0]
            self.frames[:filled] = state["frames"]
            self.shifted[:filled] = state["shifted"]
            self.added = int(state["added"])
        else:  # a checkpoint of whole stacks (ImageReplayBuffer's), written before
            self._load_stacks(state["obs"], int(state["pos"]))
        if self.added:
            newest = torch.arange(self.added - self.num_envs, self.added, device=self.device)
            self._last.copy_(self._stacks(newest % self.frame_capacity))

    def _load_stacks(self, stacks: torch.Tensor, pos: int) -> None:
        """Take the rows of an :class:`ImageReplayBuffer` state (``stacks``, its
        ``obs``, and its ``pos``) as frames: the oldest row of each environment
        brings its earlier frames along, into the slots before it. Compared where
        ``stacks`` are (a checkpoint loaded on the CPU), stored on this buffer's device.
        """
        size, n, k = stacks.shape[0], self.num_envs, self.stack
        self.added = size + (k - 1) * n  # the earlier frames at counts from 0 on

        def put(counts: torch.Tensor, frames: torch.Tensor, shifted: torch.Tensor) -> None:
            slots = (counts % self.frame_capacity).to(self.device)
            self.frames[slots] = frames.to(self.device)
            self.shifted[slots] = shifted.to(self.device)

        def rows(counts: torch.Tensor) -> torch.Tensor:  # the newest count is at pos - 1
            return (counts - self.added + pos) % self.capacity

        counts = torch.arange(self.added - size, self.added, device=stacks.device)
        for start in range(0, size, 4096):  # in chunks: comparisons of whole stacks
            chunk = counts[start : start + 4096]
            obs = stacks[rows(chunk)]
            earlier = stacks[rows(chunk - n) % size]  # (the oldest rows': not theirs)
            shifted = (obs[:, :-1] == earlier[:, 1:]).flatten(1).all(1)
            repeated = (obs[:, :-1] == obs[:, -1:]).flatten(1).all(1)
            if start == 0:  # the oldest rows: their earlier frames before them
                oldest = slice(0, min(n, size))
                shifted[oldest] = True
                for back in range(1, k):
                    put(chunk[oldest] - back * n, obs[oldest, k - 1 - back],
                        torch.full_like(shifted[oldest], back < k - 1))  # fmt: skip
            if not bool((shifted | repeated).all()):
                raise ValueError(
                    "replay buffer state holds observations that are not stacks of frames"
                )
            put(chunk, obs[:, -1], shifted)


def rows_at(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]`` for a ``long`` index of any shape (rows of ``tensor``), by
    ``index_select``: it copies whole rows, where advanced indexing goes element by
    element (on a 2-core AVX2 EPYC, 128 of Atari's 84x84 ``uint8`` frames: 40 us
    against 2 ms; a PPO rollout's 1,024 frame stacks: 3.5 against 62 ms)."""
    picked = tensor.index_select(0, index.reshape(-1))
    return picked.view(*index.shape, *tensor.shape[1:])


def filled_rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of a contiguous ``tensor``, sharing its memory, on a storage
    of their own: ``torch.save`` writes a tensor's whole storage, so a plain slice
    would write the empty rows too, and a copy (``clone``) would double the memory a
    checkpoint of a large replay buffer needs (an Atari DQN's: gigabytes)."""
    return stored_rows(tensor, 0, n)


def stored_rows(tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a contiguous ``tensor``, as :func:`filled_rows`."""
    assert tensor.is_contiguous() and tensor.storage_offset() == 0
    row_bytes = tensor[0].nbytes if len(tensor) else 0
    storage: torch.UntypedStorage = tensor.untyped_storage()[start * row_bytes : stop * row_bytes]
    view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    view.set_(storage, 0, (stop - start, *tensor.shape[1:]), tensor.stride())
    return view


def replay_buffer(
    capacity: int,
    obs: ObsLayout,
    num_envs: int,
    action_shape: tuple[int, ...],
    discrete: bool,
    device: torch.device,
    *,
    frame_stacked: bool = False,
) -> ReplayBuffer:
    """The replay buffer for ``obs``: :class:`FrameReplayBuffer` for ``frame_stacked``
    images, :class:`ImageReplayBuffer` for other ``uint8`` observations, else
    :class:`ReplayBuffer`."""
    if frame_stacked:
        return FrameReplayBuffer(capacity, obs, num_envs, action_shape, discrete, device)
    if obs.dtype == "uint8":
        return ImageReplayBuffer(capacity, obs, num_envs, action_shape, discrete, device)
    return ReplayBuffer(capacity, obs.size, action_shape, discrete, device)
