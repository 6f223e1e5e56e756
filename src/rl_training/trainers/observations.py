"""Observations as tensors, and the network that reads them first (the *encoder*).

Every observation batch is one tensor, laid out as
:mod:`rl_training.runtime.spaces` says: ``flat`` ``float32`` (vectors and Dicts of
them; the encoder is the identity and the algorithm's MLP reads them), ``image``
``uint8`` (the Nature DQN CNN of Mnih et al. 2015 reads them: three conv layers and
512 ReLU units, the pixels scaled to ``[0, 1]`` inside it, on the device), or
``packed`` ``uint8`` (a Dict with images: its vectors flattened and a CNN of 256
units per image, concatenated, as SB3's ``CombinedExtractor``).

So images are stored as ``uint8`` (a quarter of the memory) in rollouts and replay
buffers, and every algorithm's buffers hold one tensor per observation whatever
the space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.runtime import spaces
from rl_training.runtime.spaces import check_observation_space, image_channels_first


class ObsLayout(spaces.ObsLayout):
    """A :class:`rl_training.runtime.spaces.ObsLayout` with its tensors and encoder."""

    @property
    def torch_dtype(self) -> torch.dtype:
        """The stored dtype as torch's."""
        return torch.uint8 if self.dtype == "uint8" else torch.float32

    def to_tensor(self, obs: Any, device: torch.device) -> torch.Tensor:
        """A batch of observations (numpy, a Dict's as a dict of arrays) as this
        layout's tensor on ``device``."""
        if self.kind == "image":
            return torch.from_numpy(np.ascontiguousarray(obs, dtype=np.uint8)).to(
                device, non_blocking=True
            )
        if self.kind == "packed":
            return torch.from_numpy(self._pack(obs)).to(device, non_blocking=True)
        if isinstance(self.space, gym.spaces.Dict):
            parts = [_flat(obs[key], space) for key, space in self.space.spaces.items()]
            return torch.from_numpy(np.concatenate(parts, axis=1)).to(device, non_blocking=True)
        return obs_to_tensor(obs, self.space, device)  # a vector Box or a Discrete

    def _pack(self, obs: Any) -> np.ndarray:
        n = len(next(iter(obs.values())))
        out = np.zeros((n, self.shape[0]), dtype=np.uint8)
        for entry in self.entries:
            value = obs[entry.key]
            if entry.image:
                out[:, entry.start : entry.stop] = np.asarray(value, np.uint8).reshape(n, -1)
            else:
                out[:, entry.start : entry.stop] = _flat(value, entry.space).view(np.uint8)
        return out

    def encoder(self, *, orthogonal: bool = False) -> Encoder:
        """A fresh encoder for this layout (``orthogonal``: SB3's on-policy init)."""
        if self.kind == "image":
            return NatureCNN(self.space, 512, orthogonal=orthogonal)
        if self.kind == "packed":
            return DictEncoder(self, orthogonal=orthogonal)
        return Flat(self.size)


def _flat(value: Any, space: gym.Space[Any]) -> np.ndarray:
    """A batch of one Box/Discrete entry as ``float32`` ``(n, size)`` (Discrete one-hot)."""
    array = np.asarray(value)
    if isinstance(space, gym.spaces.Discrete):
        one_hot: np.ndarray = np.eye(int(space.n), dtype=np.float32)
        rows: np.ndarray = one_hot[array.reshape(-1) - int(space.start)]
        return rows
    return np.ascontiguousarray(array.reshape(array.shape[0], -1), dtype=np.float32)


def layout(space: gym.Space[Any]) -> ObsLayout:
    """The :class:`ObsLayout` of ``space``, with its tensors and encoder (gymnasium's
    spaces are not hashable: made anew each call; the hot paths keep theirs).

    Raises:
        ValueError: a space other than Box, Discrete or a Dict of them.
    """
    found = spaces.layout(space)
    return ObsLayout(found.space, found.kind, found.shape, found.dtype, found.entries)


def obs_to_tensor(obs: Any, space: gym.Space[Any], device: torch.device) -> torch.Tensor:
    """A batch of observations as their layout's tensor on ``device``: a vector Box
    flattened, Discrete one-hot (``float32``); images and Dicts as :class:`ObsLayout`
    keeps them."""
    if isinstance(space, gym.spaces.Discrete):
        index = torch.as_tensor(np.asarray(obs) - space.start, device=device, dtype=torch.long)
        return nn.functional.one_hot(index, int(space.n)).to(torch.float32)
    if not isinstance(space, gym.spaces.Box) or image_channels_first(space) is not None:
        return layout(space).to_tensor(obs, device)
    array = np.asarray(obs, dtype=np.float32)
    if array.ndim != 2:
        array = array.reshape(array.shape[0], -1)
    return torch.from_numpy(array).to(device, non_blocking=True)


def batch_of_one(obs: Any) -> Any:
    """One observation as a batch of one (a Dict's: each entry)."""
    if isinstance(obs, Mapping):
        return {key: np.asarray(value)[None] for key, value in obs.items()}
    return np.asarray(obs)[None]


# -- encoders ----------------------------------------------------------------------------


class Encoder(nn.Module):
    """The first network an observation meets: ``(n, *layout.shape) -> (n, out_dim)``."""

    out_dim: int


class Flat(Encoder):
    """The identity: flat observations go straight to the MLP."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.out_dim = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _init(module: nn.Module, orthogonal: bool) -> None:
    if orthogonal:  # SB3's ortho_init of the features extractor: gain sqrt(2), bias 0
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                assert layer.bias is not None
                nn.init.zeros_(layer.bias)


class NatureCNN(Encoder):
    """Mnih et al. 2015's network: 32 8x8/4, 64 4x4/2, 64 3x3/1 conv, ReLU, then
    ``features`` ReLU units. Takes ``uint8`` images (channels first or last) and
    scales them to ``[0, 1]`` itself."""

    def __init__(self, space: gym.Space[Any], features: int, *, orthogonal: bool) -> None:
        super().__init__()
        first = image_channels_first(space)
        assert first is not None and space.shape is not None
        self.channels_last = not first
        channels, height, width = space.shape if first else np.roll(space.shape, 1)
        self.cnn = nn.Sequential(
            nn.Conv2d(int(channels), 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.cnn(torch.zeros(1, int(channels), int(height), int(width))).shape[1]
        self.linear = nn.Linear(n_flat, features)
        self.out_dim = features
        self.compute_dtype = torch.float32
        """The convolutions' and the linear layer's dtype (``set_precision``); the
        features come out float32 either way."""
        _init(self, orthogonal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # (N, C, H, W) shape, channels-last strides
        # Scaled to [0, 1] in the compute dtype and laid out channels last (oneDNN's
        # convolutions are ~1.5x faster on it) in one pass over the images: x / 255 is
        # computed in float32 and rounded once, the same values as converting first
        # (0-255 are exact in bfloat16 too) and dividing.
        scaled = torch.empty(
            x.shape, dtype=self.compute_dtype, device=x.device, memory_format=torch.channels_last
        )
        if x.requires_grad:  # (float images differentiated through: out= takes no graph)
            x = scaled.copy_(x).div_(255.0)
        else:
            x = torch.div(x, 255.0, out=scaled)
        if self.compute_dtype == torch.float32:
            out: torch.Tensor = torch.relu(self.linear(self.cnn(x)))
            return out
        # bfloat16 on the fp32 master weights, cast in the graph (autocast's way):
        # gradients reach the fp32 weights; 256-frame minibatch forward + backward
        # 135 -> 86 ms on 2 cores with AVX512-BF16
        with torch.autocast(x.device.type, dtype=self.compute_dtype):
            out = torch.relu(self.linear(self.cnn(x)))
        return out.to(torch.float32)


class DictEncoder(Encoder):
    """A packed Dict: its vector entries flattened, a :class:`NatureCNN` (256 units)
    per image entry, concatenated (SB3's ``CombinedExtractor``)."""

    def __init__(self, found: ObsLayout, *, orthogonal: bool) -> None:
        super().__init__()
        self.vector_bytes = max((e.stop for e in found.entries if not e.image), default=0)
        self.images = [
            (e.start, e.stop, tuple(e.space.shape or ())) for e in found.entries if e.image
        ]
        self.cnns = nn.ModuleList(
            NatureCNN(e.space, 256, orthogonal=orthogonal) for e in found.entries if e.image
        )
        self.out_dim = self.vector_bytes // 4 + 256 * len(self.images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        parts = []
        if self.vector_bytes:
            parts.append(x[:, : self.vector_bytes].contiguous().view(torch.float32))
        for (start, stop, shape), cnn in zip(self.images, self.cnns, strict=True):
            parts.append(cnn(x[:, start:stop].reshape(n, *shape)))
        return torch.cat(parts, dim=1)


__all__ = [
    "DictEncoder",
    "Encoder",
    "Flat",
    "NatureCNN",
    "ObsLayout",
    "batch_of_one",
    "check_observation_space",
    "image_channels_first",
    "layout",
    "obs_to_tensor",
]
