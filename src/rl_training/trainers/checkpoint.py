"""Model files: the weights a run saves and :func:`~rl_training.evaluate` reloads.

Written through a temporary file and a rename; read with ``weights_only=True``, so
loading a file runs no code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_FORMAT = 1
"""Version of the ``model.pt`` layout written by :func:`save_model`."""


@dataclass(frozen=True)
class SavedModel:
    """What :func:`load_model` reads back."""

    algo: str
    env_id: str
    hyperparams: dict[str, Any]
    state_dicts: dict[str, dict[str, torch.Tensor]]


def save_model(
    path: Path, *, algo: str, env_id: str, hyperparams: Any, modules: Mapping[str, nn.Module]
) -> None:
    """Write the modules' weights (moved to the CPU) and what is needed to rebuild them."""
    payload = {
        "format": MODEL_FORMAT,
        "algo": algo,
        "env_id": env_id,
        "hyperparams": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(hyperparams).items()
        },
        "state_dicts": {
            name: {k: v.detach().cpu() for k, v in module.state_dict().items()}
            for name, module in modules.items()
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_model(path: Path) -> SavedModel:
    """Read a ``model.pt`` written by :func:`save_model` (weights only: no code runs).

    Raises:
        FileNotFoundError: no model at ``path``.
        ValueError: not a model file of this package.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not an rl-training model file (format {MODEL_FORMAT})")
    return SavedModel(
        algo=payload["algo"],
        env_id=payload["env_id"],
        hyperparams=payload["hyperparams"],
        state_dicts=payload["state_dicts"],
    )
