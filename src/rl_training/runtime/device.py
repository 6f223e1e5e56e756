"""Turn ``TrainConfig.device`` into a ``torch.device`` that exists on this machine."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rl_training.errors import ConfigError

if TYPE_CHECKING:
    import torch

_CUDA_RE = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``; ``"cuda"``; ``"cuda:N"``.

    Raises:
        ValueError: an unknown spelling, or CUDA asked for where there is none
            (or not that many devices).
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = _CUDA_RE.fullmatch(device) if isinstance(device, str) else None
    if match is None:
        raise ConfigError(f"device: {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device: {device!r} was asked for but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use 'cpu' or 'auto'"
        )
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"device: {device!r} does not exist; this machine has {count} CUDA device(s): "
            f"{', '.join(f'cuda:{i}' for i in range(count))}"
        )
    return torch.device("cuda", index)
