"""Turn ``TrainConfig.device`` into a ``torch.device`` that exists on this machine."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rl_training.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from rl_training.runtime.distributed import World

_CUDA_RE = re.compile(r"cuda(?::(\d+))?")


def resolve_device(device: str = "auto", world: World | None = None) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``; ``"cuda"``; ``"cuda:N"``.

    Under torchrun (``world`` distributed) each process uses ``cuda:LOCAL_RANK``
    for ``"auto"`` and ``"cuda"``.

    Raises:
        ValueError: an unknown spelling, CUDA asked for where there is none (or not
            that many devices), or ``"cuda:N"`` under torchrun.
    """
    import torch

    if world is not None and world.distributed and device not in ("auto", "cpu", "cuda"):
        if isinstance(device, str) and _CUDA_RE.fullmatch(device):
            raise ConfigError(
                f"device: {device!r} under torchrun: each process uses cuda:LOCAL_RANK; "
                "pass 'cuda' or 'auto' (or 'cpu')"
            )
    if world is not None and world.distributed and device in ("auto", "cuda"):
        if torch.cuda.is_available():
            device = f"cuda:{world.local_rank}"

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
