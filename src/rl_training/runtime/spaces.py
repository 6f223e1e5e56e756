"""Observation spaces as rl-training keeps them: which it reads, how each is laid out
as one array per observation, and what a replay buffer of them takes in memory.

Three layouts:

- ``flat``: a Box that is not an image, a Discrete (one-hot), or a Dict of those
  (each entry flattened, in the Dict's key order, and concatenated) -> ``float32``
  ``(size,)``.
- ``image``: a Box of ``uint8`` in ``[0, 255]`` of rank 3, channels first or last
  (the smallest axis, as SB3 decides) -> ``uint8`` as it is.
- ``packed``: a Dict with at least one image entry -> ``uint8`` ``(bytes,)``: the
  vector entries' ``float32`` bytes first, then the images' pixels.

The networks that read them are in :mod:`rl_training.trainers.observations`. This
module imports no torch (but for a GPU's free memory), so a run is checked before
anything is loaded.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from rl_training.errors import ConfigError

NATURE_CNN_MIN_SIZE = 36
"""The smallest image side the Nature CNN takes (8x8 stride 4, 4x4 stride 2, 3x3)."""

SUPPORTED = "Box, Discrete, or a Dict of them (images: Box uint8 (H, W, C) or (C, H, W))"
"""The observation spaces rl-training reads, for error messages."""


def image_channels_first(space: gym.Space[Any]) -> bool | None:
    """``True``/``False`` for an image space with channels first/last, ``None`` for a
    space that is not an image (Box ``uint8`` of rank 3 bounded by 0 and 255)."""
    if not isinstance(space, gym.spaces.Box) or space.dtype != np.uint8:
        return None
    if len(space.shape) != 3 or np.any(space.low != 0) or np.any(space.high != 255):
        return None
    return int(np.argmin(space.shape)) == 0


@dataclass(frozen=True)
class _Entry:
    """One entry of a packed Dict: where its bytes are."""

    key: str
    space: gym.Space[Any]
    start: int
    stop: int
    image: bool


@dataclass(frozen=True)
class ObsLayout:
    """How observations of one space are kept (see the module docstring)."""

    space: gym.Space[Any]
    kind: Literal["flat", "image", "packed"]
    shape: tuple[int, ...]
    """One observation's tensor shape."""
    dtype: Literal["uint8", "float32"]
    """How it is stored (images ``uint8``)."""
    entries: tuple[_Entry, ...] = ()
    """``packed``: the Dict's entries, vectors first."""

    @property
    def size(self) -> int:
        """Elements of one observation."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of one observation as stored."""
        return self.size * (1 if self.dtype == "uint8" else 4)

    @property
    def has_images(self) -> bool:
        """Whether a CNN reads (part of) it."""
        return self.kind != "flat"


def _shape(space: gym.Space[Any]) -> tuple[int, ...]:
    return tuple(space.shape or ())


def _vector_size(space: gym.Space[Any]) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    return math.prod(_shape(space))


def layout(space: gym.Space[Any]) -> ObsLayout:
    """The :class:`ObsLayout` of ``space``.

    Raises:
        ValueError: a space other than Box, Discrete or a Dict of them.
    """
    if isinstance(space, gym.spaces.Dict):
        entries, vector_bytes, images = [], 0, []
        for key, sub in space.spaces.items():
            if isinstance(sub, gym.spaces.Dict) or not isinstance(
                sub, gym.spaces.Box | gym.spaces.Discrete
            ):
                raise ConfigError(
                    f"observation space: Dict entry {key!r} is {sub}; entries must be "
                    "Box or Discrete"
                )
            if image_channels_first(sub) is not None:
                images.append((key, sub))
            else:
                size = 4 * _vector_size(sub)
                entries.append(_Entry(key, sub, vector_bytes, vector_bytes + size, False))
                vector_bytes += size
        if not images:
            size = vector_bytes // 4
            return ObsLayout(space, "flat", (size,), "float32")
        at = vector_bytes
        for key, sub in images:
            entries.append(_Entry(key, sub, at, at + math.prod(_shape(sub)), True))
            at += math.prod(_shape(sub))
        at += -at % 4  # rows a multiple of 4 bytes: the float32 part stays viewable
        return ObsLayout(space, "packed", (at,), "uint8", tuple(entries))
    if image_channels_first(space) is not None:
        return ObsLayout(space, "image", _shape(space), "uint8")
    if isinstance(space, gym.spaces.Box | gym.spaces.Discrete):
        return ObsLayout(space, "flat", (_vector_size(space),), "float32")
    raise ConfigError(f"observation space {space} is not supported ({SUPPORTED})")


def check_observation_space(algo: str, env_id: str, space: gym.Space[Any], *, images: bool) -> None:
    """Refuse, in one line, an observation space ``algo`` cannot read.

    Raises:
        ValueError: not Box, Discrete or a Dict of them; an image (or a Dict with one)
            for an algorithm without a CNN (``images=False``); an image smaller than
            the Nature CNN takes.
    """
    try:
        found = layout(space)
    except ConfigError as error:
        raise ConfigError(f"algo {algo!r} does not fit env {env_id!r}: {error}") from None
    if found.has_images and not images:
        raise ConfigError(
            f"algo {algo!r} does not fit env {env_id!r}: its observations are images "
            f"({space}); {algo} takes vector observations only (ppo, a2c and dqn read "
            "images with a CNN)"
        )
    image_spaces = [e.space for e in found.entries if e.image] if found.kind == "packed" else []
    if found.kind == "image":
        image_spaces = [space]
    for image in image_spaces:
        first = image_channels_first(image)
        height, width = _shape(image)[1:] if first else _shape(image)[:2]
        if min(height, width) < NATURE_CNN_MIN_SIZE:
            raise ConfigError(
                f"algo {algo!r} does not fit env {env_id!r}: its image observations are "
                f"{height}x{width}; the Nature CNN takes images of at least "
                f"{NATURE_CNN_MIN_SIZE}x{NATURE_CNN_MIN_SIZE}"
            )


def check_normalizable(env_id: str, space: gym.Space[Any]) -> None:
    """Refuse ``normalize_obs`` for observations that are not a vector Box.

    Raises:
        ValueError: one line naming ``normalize_obs``, the env and its space.
    """
    if isinstance(space, gym.spaces.Box) and image_channels_first(space) is None:
        return
    raise ConfigError(
        f"hyperparams['normalize_obs']: env {env_id!r} observes {space}; normalize_obs "
        "takes vector Box observations (images are scaled inside the CNN)"
    )


# -- memory ------------------------------------------------------------------------------


def replay_memory(
    capacity: int,
    obs: ObsLayout,
    num_envs: int,
    action_shape: tuple[int, ...],
    *,
    frame_stacked: bool = False,
) -> int:
    """Bytes a replay buffer of ``capacity`` transitions takes (what
    ``rl_training.trainers.buffers.replay_buffer`` allocates)."""
    action = 4 * math.prod(action_shape) if action_shape else 8
    per_row = action + 12
    if obs.dtype == "uint8":
        side = obs.nbytes / 16 + 8  # the side store (a 16th of the rows), side_row
        fixed = num_envs * obs.nbytes * 2
        if frame_stacked:  # a frame and its flag per row, and the oldest rows' history
            frame = obs.nbytes // obs.shape[0]
            fixed += (obs.shape[0] - 1) * num_envs * (frame + 1)
            return int(capacity * (per_row + frame + 1 + side) + fixed)
        return int(capacity * (per_row + obs.nbytes + side) + fixed)
    return int(capacity * (per_row + 2 * obs.nbytes))


def available_memory(device: Any) -> int:
    """Bytes that can still be allocated on ``device``: the GPU's free memory, or
    the host's available memory (``MemAvailable``, within a cgroup's limit)."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            line = next(line for line in meminfo if line.startswith("MemAvailable:"))
        available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    return max(available, 0)


def check_replay_fits(
    buffer_size: int,
    observation_space: Any,
    action_space: Any,
    num_envs: int,
    device: Any,
    *,
    frame_stacked: bool = False,
) -> None:
    """Refuse, before anything is allocated or written, a replay buffer larger than
    the memory available on ``device``.

    Raises:
        ValueError: one line naming ``buffer_size``, what it needs, what is
            available and the largest ``buffer_size`` that fits.
    """
    found = layout(observation_space)
    shape = tuple(getattr(action_space, "shape", None) or ())
    action_shape = (math.prod(shape),) if shape else ()
    need = replay_memory(buffer_size, found, num_envs, action_shape, frame_stacked=frame_stacked)
    available = available_memory(device)
    if need <= available:
        return
    per_row = (
        replay_memory(1_000_000, found, num_envs, action_shape, frame_stacked=frame_stacked)
        / 1_000_000
    )
    fits = max(int(available / per_row) - num_envs, 0)
    gib = 2**30
    what = f"{'x'.join(map(str, found.shape))} {found.dtype}"
    raise ConfigError(
        f"hyperparams['buffer_size']: {buffer_size} transitions of {what} observations "
        f"need {need / gib:.1f} GiB, and {available / gib:.1f} GiB of {device.type} memory "
        f"is available: the largest buffer_size that fits is {fits}"
    )


__all__ = [
    "ObsLayout",
    "available_memory",
    "check_normalizable",
    "check_observation_space",
    "check_replay_fits",
    "image_channels_first",
    "layout",
    "replay_memory",
]
