"""Model and checkpoint files of a run.

``model.pt`` holds the weights :func:`~rl_training.evaluate` reloads;
``checkpoint.pt`` the whole training state :func:`~rl_training.resume` continues
from. Both are written through a temporary file and a rename and read with
``weights_only=True``, so loading a file runs no code.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.runtime.context import write_bytes_atomic

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
    write_bytes_atomic(path, _serialise(payload))


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


CHECKPOINT_FORMAT = 1
"""Version of the ``checkpoint.pt`` layout written by :func:`save_checkpoint`."""

_CONFIG_FIELDS = (
    "algo", "env_id", "seed", "total_timesteps", "device", "log_sinks", "hyperparams",
    "checkpoint_every",
)  # fmt: skip


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` reads back."""

    config: dict[str, Any]
    """The run's :class:`~rl_training.TrainConfig` fields (all but ``output_dir``)."""
    step: int
    """Environment steps when it was written."""
    trainer: dict[str, Any]
    """The trainer's ``state_dict()``."""


def save_checkpoint(path: Path, *, config: TrainConfig, step: int, state: Any) -> None:
    """Write the trainer's whole state atomically (a reader never sees half a file)."""
    fields = {name: getattr(config, name) for name in _CONFIG_FIELDS}
    fields["log_sinks"] = list(config.log_sinks)
    fields["hyperparams"] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in config.hyperparams.items()
    }
    payload = {"format": CHECKPOINT_FORMAT, "config": fields, "step": step, "trainer": state}
    write_bytes_atomic(path, _serialise(payload))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a ``checkpoint.pt`` (weights only: no code runs), onto the CPU.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: not a checkpoint of this package.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {path.parent} (no {path.name})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  # truncated or foreign files alike
        raise ConfigError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not an rl-training checkpoint (format {CHECKPOINT_FORMAT})")
    return Checkpoint(config=payload["config"], step=payload["step"], trainer=payload["trainer"])


def _serialise(payload: Any) -> bytes:
    """``torch.save`` into memory: written by :func:`write_bytes_atomic`, a full disk is
    a plain ``OSError`` naming the file (torch's own file writer reports a
    ``RuntimeError`` about zip offsets instead)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data: bytes = buffer.getvalue()
    return data
