"""``TrainConfig``: what one training run is, validated when it is made."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_training.errors import ConfigError
from rl_training.hyperparams import Hyperparams
from rl_training.registry import ALGOS, AlgorithmSpec, get_spec

DEFAULT_LOG_SINKS: tuple[str, ...] = ("json", "tensorboard")
"""Sinks a run logs to unless told otherwise."""

MAX_SEED = 2**64 - 1
"""The largest seed: torch's generators take 64-bit seeds."""

MAX_STEPS = 2**63 - 1
"""The largest step count: steps are logged as signed 64-bit ints."""

MAX_EVAL_EPISODES = 2**16 - 1
"""The most evaluation episodes (each runs in an environment of its own)."""

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
_SINK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_VIDEO_LENGTH = 100_000
"""The most frames ``video_length`` may ask for."""
_INFO_KEY_RE = re.compile(r"[A-Za-z0-9_./-]+")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. Every field is checked on construction.

    Raises:
        ValueError: a field has a bad value; the message names the field and what is
            accepted. What depends on the machine (installed sinks, CUDA, the env id,
            the action space) is checked when the run starts, before anything is
            written.
    """

    algo: str = field(metadata={"help": "algorithm"})
    """Algorithm: one of :data:`ALGOS`."""
    env_id: str = field(metadata={"help": "gymnasium environment id, e.g. CartPole-v1"})
    """A registered gymnasium environment id, e.g. ``"CartPole-v1"``."""
    seed: int = field(metadata={"help": "random seed (default: 0)", "cli_default": 0})
    """Seed of torch, numpy, the environments and action sampling (>= 0)."""
    total_timesteps: int = field(metadata={"help": "environment steps to train for"})
    """Environment steps to train for, summed over parallel environments (> 0)."""
    output_dir: str | Path = field(
        default="runs", metadata={"help": "where run directories go (default: runs)"}
    )
    """Directory under which each run gets a fresh directory of its own."""
    device: str = field(
        default="auto", metadata={"help": "auto, cpu, cuda or cuda:N (default: auto)"}
    )
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    log_sinks: Sequence[str] = field(
        default=DEFAULT_LOG_SINKS,
        metadata={
            "help": f"comma-separated sinks (default: {','.join(DEFAULT_LOG_SINKS)}; "
            "see --list-sinks)"
        },
    )
    """Names of the sinks to log to (see ``rl-train --list-sinks``)."""
    hyperparams: Mapping[str, Any] = field(default_factory=dict, metadata={"cli": "--hp"})
    """Overrides of the algorithm's hyperparameters (see :mod:`rl_training.hyperparams`)."""
    checkpoint_every: int | None = field(
        default=None,
        metadata={
            "help": "environment steps between checkpoints (default: a tenth of the run; "
            "0: none but on a stop and at the end)",
            "metavar": "N",
        },
    )
    """Environment steps between checkpoints (``run_dir / "checkpoint.pt"``): ``None``
    is about a tenth of ``total_timesteps``, ``0`` none during training. A checkpoint
    is also written when the run is stopped by SIGINT/SIGTERM and when it finishes."""
    eval_every: int = field(
        default=0,
        metadata={
            "help": "environment steps between evaluations (default: 0, none); keeps best_model.pt",
            "metavar": "N",
        },
    )
    """Environment steps between evaluations (0: none): ``eval_episodes`` deterministic
    episodes on separate, separately seeded envs, logged as ``eval/mean_return``,
    ``eval/std_return`` and ``eval/mean_length``; the best model so far is kept as
    ``run_dir / "best_model.pt"``."""
    eval_episodes: int = field(
        default=10, metadata={"help": "episodes per evaluation (default: 10)", "metavar": "K"}
    )
    """Episodes per evaluation."""
    info_keys: Sequence[str] = field(
        default=(),
        metadata={
            "help": "comma-separated numeric entries of a finished episode's final info to "
            "log as episode/<key>",
            "metavar": "A,B",
        },
    )
    """Numeric entries of a finished episode's final ``info`` logged as
    ``episode/<key>`` (``is_success``, gymnasium's convention, always adds
    ``episode/success`` and ``episode/success_rate`` over the last 100 episodes)."""
    video_every: int = field(
        default=0,
        metadata={
            "help": "environment steps between videos of one deterministic episode "
            "(eval/video; default: 0, none)",
            "metavar": "N",
        },
    )
    """Environment steps between videos (0: none): one deterministic episode on a
    separate env made with ``render_mode="rgb_array"``, logged as ``eval/video`` at the
    env's ``render_fps``. An env that cannot render is refused before the run starts."""
    video_length: int = field(
        default=1000,
        metadata={"help": "most frames of a video (default: 1000)", "metavar": "T"},
    )
    """The most frames a video holds (the episode is cut there)."""
    histogram_every: int = field(
        default=0,
        metadata={
            "help": "environment steps between histograms of every network parameter "
            "(default: 0, none)",
            "metavar": "N",
        },
    )
    """Environment steps between histograms of each network parameter, logged as
    ``weights/<network>/<parameter>`` (0: none)."""

    # Each field's metadata tells the command line about it: "help" (and "metavar",
    # "cli_default" where the command line has a default the dataclass has not);
    # "cli" names a flag of its own (``--hp KEY=VALUE`` for ``hyperparams``). Every
    # field without "cli" is an option ``--field-name`` (see rl_training.cli).

    def __post_init__(self) -> None:
        spec = get_spec(self.algo)
        if not isinstance(self.env_id, str) or not self.env_id.strip():
            raise ConfigError(
                f"env_id: {self.env_id!r} is not a gymnasium environment id "
                "(a non-empty string such as 'CartPole-v1')"
            )
        _require_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        _require_int("total_timesteps", self.total_timesteps, minimum=1, maximum=MAX_STEPS)
        if self.checkpoint_every is not None:
            _require_int("checkpoint_every", self.checkpoint_every, minimum=0, maximum=MAX_STEPS)
        _require_int("eval_every", self.eval_every, minimum=0, maximum=MAX_STEPS)
        _require_int("eval_episodes", self.eval_episodes, minimum=1, maximum=MAX_EVAL_EPISODES)
        _require_int("histogram_every", self.histogram_every, minimum=0, maximum=MAX_STEPS)
        _require_int("video_every", self.video_every, minimum=0, maximum=MAX_STEPS)
        _require_int("video_length", self.video_length, minimum=1, maximum=MAX_VIDEO_LENGTH)
        object.__setattr__(self, "info_keys", info_key_names(self.info_keys))
        if not isinstance(self.output_dir, (str, Path)) or str(self.output_dir) == "":
            raise ConfigError(
                f"output_dir: {self.output_dir!r} is not a directory path (str or Path)"
            )
        if not isinstance(self.device, str) or not _DEVICE_RE.fullmatch(self.device):
            raise ConfigError(
                f"device: {self.device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"
            )
        object.__setattr__(self, "log_sinks", sink_names(self.log_sinks))
        if not isinstance(self.hyperparams, Mapping):
            raise ConfigError(
                f"hyperparams: {self.hyperparams!r} is not a mapping of hyperparameter "
                f"names to values; valid keys for {self.algo!r}: "
                f"{', '.join(spec.hyperparam_names)}"
            )
        # Built once, here, so that a bad key or value fails now, not mid-run; kept
        # (not a field: it is derived) for everything downstream.
        object.__setattr__(self, "_resolved", spec.build_hyperparams(self.hyperparams))
        object.__setattr__(self, "hyperparams", ReadOnlyDict(self.hyperparams))

    @property
    def spec(self) -> AlgorithmSpec:
        """The algorithm's entry in :data:`rl_training.registry.ALGORITHMS`."""
        return get_spec(self.algo)

    @property
    def checkpoint_interval(self) -> int:
        """Environment steps between checkpoints during training (0: none)."""
        if self.checkpoint_every is None:
            return max(self.total_timesteps // 10, 1)
        return self.checkpoint_every

    def algo_hyperparams(self) -> Hyperparams:
        """The algorithm's hyperparameter dataclass with ``hyperparams`` applied.

        Built once when the config was made; frozen, so it is shared.
        """
        resolved: Hyperparams = self.__dict__["_resolved"]
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """A JSON-shaped view: every field, plus the resolved hyperparameters."""
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        data["resolved_hyperparams"] = dataclasses.asdict(self.algo_hyperparams())
        return data


def _plain(value: Any) -> Any:
    """A field's value as JSON types: a path as its text, a sequence as a list."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, list)):
        return list(value)
    return value


RESUMABLE_FIELDS: tuple[str, ...] = ("total_timesteps", "device")
"""The fields a resume may change (a larger budget, another device); every other
one is the run's own."""


def fixed_on_resume() -> tuple[str, ...]:
    """The fields a resume takes from the checkpoint as they are: all but
    :data:`RESUMABLE_FIELDS` and ``output_dir`` (the run directory's parent)."""
    return tuple(
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUMABLE_FIELDS and f.name != "output_dir"
    )


class ReadOnlyDict(Mapping[str, Any]):
    """A read-only copy of a mapping that still pickles and deep-copies.

    ``types.MappingProxyType`` would be read-only too, but it cannot be pickled, so a
    config could not be sent to a worker process or passed to ``dataclasses.asdict``.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[type[ReadOnlyDict], tuple[dict[str, Any]]]:
        return (type(self), (self._data,))


def _require_int(name: str, value: object, *, minimum: int, maximum: int) -> None:
    accepted = f"integers >= {minimum} and < 2**{(maximum + 1).bit_length() - 1}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: {value!r} is not an integer (accepted: {accepted})")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}: {value!r} is out of range (accepted: {accepted})")


def info_key_names(value: object) -> tuple[str, ...]:
    """Normalise ``info_keys``: a sequence of keys, or one comma-separated string."""
    if isinstance(value, str):
        names: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Sequence):
        names = list(value)
    else:
        raise ConfigError(f"info_keys: {value!r} is not a sequence of info keys such as "
                          "['distance', 'is_success']")  # fmt: skip
    for name in names:
        if not isinstance(name, str) or not _INFO_KEY_RE.fullmatch(name):
            raise ConfigError(
                f"info_keys: {name!r} is not an info key (letters, digits, '_', '.', '-', '/')"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"info_keys: {names!r} names a key more than once")
    return tuple(names)  # type: ignore[arg-type]  # every item checked to be a str above


def sink_names(value: object) -> tuple[str, ...]:
    """Normalise ``log_sinks``: a sequence of names, or one comma-separated string."""
    if isinstance(value, str):
        names: list[object] = [part.strip() for part in value.split(",")]
    elif isinstance(value, Sequence):
        names = list(value)
    else:
        raise ConfigError(
            f"log_sinks: {value!r} is not a sequence of sink names such as "
            f"{list(DEFAULT_LOG_SINKS)!r}"
        )
    if not names:
        raise ConfigError("log_sinks: empty; name at least one sink, e.g. 'json'")
    for name in names:
        if not isinstance(name, str) or not _SINK_NAME_RE.fullmatch(name):
            raise ConfigError(
                f"log_sinks: {name!r} is not a sink name (letters, digits, '_', '.', '-')"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1}, key=str)
    if duplicates:
        raise ConfigError(f"log_sinks: {', '.join(map(repr, duplicates))} named more than once")
    return tuple(names)  # type: ignore[arg-type]  # every item checked to be a str above


__all__ = [
    "ALGOS",
    "DEFAULT_LOG_SINKS",
    "MAX_SEED",
    "MAX_STEPS",
    "RESUMABLE_FIELDS",
    "TrainConfig",
    "fixed_on_resume",
]
