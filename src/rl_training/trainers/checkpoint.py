"""Model and checkpoint files of a run.

``model.pt`` (and ``best_model.pt``) hold the weights a policy is rebuilt from;
``checkpoint.pt`` the whole training state :func:`~rl_training.resume` continues
from. Both carry the env's observation and action spaces, so a policy is rebuilt
without making the env. Both are written atomically and read with
``weights_only=True``, so loading a file runs no code.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.config import RESUMABLE_FIELDS, TrainConfig, fixed_on_resume
from rl_training.errors import ConfigError
from rl_training.registry import get_spec
from rl_training.runtime.context import RunFiles, writing_atomic

MODEL_FORMAT = 2
"""Version of the ``model.pt`` layout written by :func:`save_model`."""

CHECKPOINT_FORMAT = 1
"""Version of the ``checkpoint.pt`` layout written by :func:`save_checkpoint`."""


@dataclass(frozen=True)
class SavedModel:
    """A policy's weights and what is needed to rebuild its networks."""

    algo: str
    env_id: str
    hyperparams: dict[str, Any]
    """The resolved hyperparameters, as plain values."""
    state_dicts: dict[str, dict[str, torch.Tensor]]
    """Module name -> its ``state_dict``."""
    observation_space: gym.Space[Any]
    """The env's observation space."""
    action_space: gym.Space[Any]
    """The env's action space."""


def save_model(
    path: Path,
    *,
    algo: str,
    env_id: str,
    hyperparams: Any,
    modules: Mapping[str, nn.Module],
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
) -> None:
    """Write the modules' weights (moved to the CPU) and what is needed to rebuild them."""
    payload = {
        "format": MODEL_FORMAT,
        "algo": algo,
        "env_id": env_id,
        "hyperparams": _plain(asdict(hyperparams)),
        "state_dicts": {
            name: {k: v.detach().cpu() for k, v in module.state_dict().items()}
            for name, module in modules.items()
        },
        "spaces": {"observation": space_to_dict(observation_space),
                   "action": space_to_dict(action_space)},
    }  # fmt: skip
    _save_atomic(path, payload)


def load_model(path: Path) -> SavedModel:
    """Read a ``model.pt`` written by :func:`save_model` (weights only: no code runs).

    Raises:
        FileNotFoundError: no model at ``path``.
        ValueError: not a model file of this package.
    """
    payload = _load(path, "model", (MODEL_FORMAT,))
    spaces = payload["spaces"]
    return SavedModel(
        algo=payload["algo"],
        env_id=payload["env_id"],
        hyperparams=payload["hyperparams"],
        state_dicts=payload["state_dicts"],
        observation_space=space_from_dict(spaces["observation"]),
        action_space=space_from_dict(spaces["action"]),
    )


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` reads back."""

    config: dict[str, Any]
    """The run's :class:`~rl_training.TrainConfig` fields (all but ``output_dir``)."""
    step: int
    """Environment steps when it was written."""
    trainer: dict[str, Any]
    """The trainer's ``state_dict()``."""
    extra: dict[str, Any]
    """State of the run besides the trainer's (evaluation's best return...)."""
    observation_space: gym.Space[Any]
    action_space: gym.Space[Any]

    def saved_model(self, module_names: tuple[str, ...]) -> SavedModel:
        """The policy part of the checkpoint, as a model file holds it."""
        config = self.config
        hyperparams = get_spec(config["algo"]).build_hyperparams(config["hyperparams"])
        state_dicts = {name: self.trainer[name] for name in module_names}
        obs_norm = self.trainer.get("session", {}).get("obs_norm")
        if obs_norm is not None:  # normalize_obs: the statistics the policy reads with
            state_dicts["obs_norm"] = obs_norm
        return SavedModel(
            algo=config["algo"],
            env_id=config["env_id"],
            hyperparams=_plain(asdict(hyperparams)),
            state_dicts=state_dicts,
            observation_space=self.observation_space,
            action_space=self.action_space,
        )


def save_checkpoint(
    path: Path,
    *,
    config: TrainConfig,
    step: int,
    state: Any,
    spaces: tuple[gym.Space[Any], gym.Space[Any]],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the trainer's whole state atomically (a reader never sees half a file)."""
    plain = config.to_dict()
    fields = {name: plain[name] for name in (*fixed_on_resume(), *RESUMABLE_FIELDS)}
    fields["hyperparams"] = _plain(fields["hyperparams"])
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": fields,
        "step": step,
        "trainer": state,
        "extra": dict(extra or {}),
        "spaces": {"observation": space_to_dict(spaces[0]), "action": space_to_dict(spaces[1])},
    }
    _save_atomic(path, payload)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a ``checkpoint.pt`` (weights only: no code runs), onto the CPU.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: not a checkpoint of this package.
    """
    payload = _load(path, "checkpoint", (CHECKPOINT_FORMAT,))
    return Checkpoint(
        config=payload["config"],
        step=payload["step"],
        trainer=payload["trainer"],
        extra=payload.get("extra", {}),
        observation_space=space_from_dict(payload["spaces"]["observation"]),
        action_space=space_from_dict(payload["spaces"]["action"]),
    )


def space_to_dict(space: gym.Space[Any]) -> dict[str, Any]:
    """A Box, Discrete or Dict space as tensors and plain values (``weights_only``-safe)."""
    if isinstance(space, gym.spaces.Dict):
        entries = [[key, space_to_dict(sub)] for key, sub in space.spaces.items()]
        return {"type": "Dict", "entries": entries}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "low": torch.from_numpy(np.asarray(space.low).copy()),
            "high": torch.from_numpy(np.asarray(space.high).copy()),
            "dtype": str(space.dtype),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ValueError(f"space {space} is not supported (Box, Discrete or a Dict of them)")


def space_from_dict(data: Mapping[str, Any]) -> gym.Space[Any]:
    """The space :func:`space_to_dict` described."""
    if data["type"] == "Box":
        dtype = np.dtype(data["dtype"])
        return gym.spaces.Box(data["low"].numpy(), data["high"].numpy(), dtype=dtype)
    if data["type"] == "Dict":  # the entries in their order (a dict would be sorted)
        return gym.spaces.Dict(
            collections.OrderedDict((key, space_from_dict(sub)) for key, sub in data["entries"])
        )
    return gym.spaces.Discrete(data["n"], start=data["start"])


def _load(path: Path, kind: str, formats: tuple[int, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} in {path.parent} (no {path.name})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  # truncated or foreign files alike
        raise ConfigError(f"{path} is not a readable {kind} file: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise ConfigError(f"{path} is not an rl-training {kind} file (format {formats[-1]})")
    return payload


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _save_atomic(path: Path, payload: Any) -> None:
    """``torch.save`` straight into ``path``'s temporary file, renamed when complete
    (:func:`replacing`): the tensors are written from their own memory, never copied
    into a bytes object first (a checkpoint of a 3 GB replay buffer needed 6 GB more
    that way).

    Raises:
        OSError: it cannot be written (a full disk), naming ``path``, not torch's
            ``RuntimeError`` about zip offsets; the old file is kept.
    """
    with writing_atomic(path) as f:
        writer = _Writes(f)
        try:
            torch.save(payload, writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


class _Writes:
    """A file's ``write`` and ``flush`` for ``torch.save``, keeping the ``OSError`` that
    torch's writer turns into a ``RuntimeError``."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self._file.flush()


class Checkpointer:
    """When and where a run's checkpoint and final model are written.

    Only the writing process (rank 0 under torchrun) writes; the others go through
    the same calls and write nothing. A checkpoint is written once per step: the
    periodic one, the one on a stop and the one at the end may fall on one step.
    """

    def __init__(
        self,
        files: RunFiles,
        *,
        config: TrainConfig,
        spaces: tuple[gym.Space[Any], gym.Space[Any]],
        writer: bool,
        world_size: int,
        run_id: str | None = None,
    ) -> None:
        self.files = files
        """The run directory's files."""
        self._config, self._spaces = config, spaces
        self._writer, self._world_size = writer, world_size
        self._run = {"run_id": run_id} if run_id is not None else {}
        self._written_at = -1

    def save(self, steps: int, trainer_state: Callable[[], Any], extra: Mapping[str, Any]) -> None:
        """Write ``checkpoint.pt`` at ``steps`` unless it was written at this step.

        ``trainer_state`` is called only when a checkpoint is written.
        """
        if not self._writer or self._written_at == steps:
            return
        save_checkpoint(
            self.files.checkpoint,
            config=self._config,
            step=steps,
            state=trainer_state(),
            spaces=self._spaces,
            extra={"world_size": self._world_size, **self._run, **extra},
        )
        self._written_at = steps

    def save_model(self, *, algo: str, hyperparams: Any, modules: Mapping[str, nn.Module]) -> None:
        """Write ``model.pt``: the final model."""
        if self._writer:
            save_model(
                self.files.model,
                algo=algo,
                env_id=self._config.env_id,
                hyperparams=hyperparams,
                modules=modules,
                observation_space=self._spaces[0],
                action_space=self._spaces[1],
            )
