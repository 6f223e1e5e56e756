"""The table of algorithms: one :class:`AlgorithmSpec` per algorithm, in one place.

Adding an algorithm is a trainer module (a class following
:class:`rl_training.trainers.session.Trainer`), its hyperparameter dataclass in
:mod:`rl_training.hyperparams`, and one entry in :data:`ALGORITHMS`. Everything
else (``TrainConfig`` validation, ``--hp`` parsing, ``--list-hyperparams``, the
space checks before a run starts, finding the trainer) reads this table.

This module imports neither torch nor gymnasium: configs are validated without them.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rl_training import hyperparams as _hp
from rl_training.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class AlgorithmSpec:
    """What rl-training knows of an algorithm before importing its trainer."""

    name: str
    """The name ``TrainConfig.algo`` and ``--algo`` take."""
    hyperparams: type[_hp.Hyperparams]
    """Its hyperparameter dataclass (``TrainConfig.hyperparams`` overrides its fields)."""
    trainer: str
    """``"module:Class"`` of its trainer, imported on first use."""
    action_spaces: tuple[str, ...]
    """The gymnasium action-space classes it can act in."""
    observation_spaces: tuple[str, ...] = ("Box", "Discrete", "Dict")
    """The gymnasium observation-space classes its networks read (a Dict's entries
    Box or Discrete)."""
    image_observations: bool = False
    """Whether its networks read images (a Nature CNN first)."""
    distributed: bool = False
    """Whether it trains on several processes under ``torchrun``."""

    @property
    def title(self) -> str:
        """One line naming the algorithm and its paper (its hyperparameters' docstring)."""
        return (self.hyperparams.__doc__ or self.name).strip().splitlines()[0]

    @property
    def hyperparam_names(self) -> tuple[str, ...]:
        """Every hyperparameter it accepts, in declaration order."""
        return _hp.field_names(self.hyperparams)

    def hyperparam_fields(self) -> tuple[dataclasses.Field[Any], ...]:
        """The hyperparameter dataclass fields (name, default), in declaration order."""
        return dataclasses.fields(self.hyperparams)

    def build_hyperparams(self, overrides: Mapping[str, Any]) -> _hp.Hyperparams:
        """The hyperparameters with ``overrides`` applied.

        Raises:
            ValueError: an unknown key (the valid ones are listed) or a bad value.
        """
        return _hp.build(self.hyperparams, overrides, algo=self.name)

    def check_spaces(self, env_id: str, observation_space: Any, action_space: Any) -> None:
        """Refuse an env whose spaces this algorithm cannot handle.

        Raises:
            ValueError: naming the algorithm, the env, its space and the accepted kinds.
        """
        for kind, space, accepted in (
            ("action", action_space, self.action_spaces),
            ("observation", observation_space, self.observation_spaces),
        ):
            if type(space).__name__ not in accepted:
                raise ConfigError(
                    f"algo {self.name!r} does not fit env {env_id!r}: its {kind} space is "
                    f"{space}, and {self.name} takes {' or '.join(accepted)} {kind} spaces"
                )


ALGORITHMS: Mapping[str, AlgorithmSpec] = types.MappingProxyType(
    {
        spec.name: spec
        for spec in (
            AlgorithmSpec(
                name="ppo",
                hyperparams=_hp.PPOHyperparams,
                trainer="rl_training.trainers.ppo:PPOTrainer",
                action_spaces=("Discrete", "Box"),
                image_observations=True,
                distributed=True,
            ),
            AlgorithmSpec(
                name="a2c",
                hyperparams=_hp.A2CHyperparams,
                trainer="rl_training.trainers.a2c:A2CTrainer",
                action_spaces=("Discrete", "Box"),
                image_observations=True,
                distributed=True,
            ),
            AlgorithmSpec(
                name="dqn",
                hyperparams=_hp.DQNHyperparams,
                trainer="rl_training.trainers.dqn:DQNTrainer",
                action_spaces=("Discrete",),
                image_observations=True,
            ),
            AlgorithmSpec(
                name="sac",
                hyperparams=_hp.SACHyperparams,
                trainer="rl_training.trainers.sac:SACTrainer",
                action_spaces=("Box",),
            ),
            AlgorithmSpec(
                name="td3",
                hyperparams=_hp.TD3Hyperparams,
                trainer="rl_training.trainers.td3:TD3Trainer",
                action_spaces=("Box",),
            ),
        )
    }
)
"""Algorithm name -> its spec (the order is the CLI's)."""

ALGOS: tuple[str, ...] = tuple(ALGORITHMS)
"""The algorithms ``TrainConfig.algo`` accepts."""


def get_spec(algo: str) -> AlgorithmSpec:
    """The spec of ``algo``.

    Raises:
        ValueError: an unknown algorithm (the message lists the known ones).
    """
    try:
        return ALGORITHMS[algo]
    except (KeyError, TypeError):
        raise ConfigError(f"algo: {algo!r} is not one of {', '.join(map(repr, ALGOS))}") from None


__all__ = ["ALGORITHMS", "ALGOS", "AlgorithmSpec", "get_spec"]
