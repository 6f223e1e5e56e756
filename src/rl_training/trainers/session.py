"""The trainer lifecycle: the :class:`Session` a trainer runs in, the :class:`Trainer`
protocol every algorithm follows, and :func:`run_loop`, the one loop they all share.

A trainer is a class built on a session. Each call of ``iteration()`` collects
experience through ``session.stepper`` (one vector step for the off-policy
algorithms, one rollout for the on-policy ones), computes its targets, optimises,
and returns the values of its training row; :func:`run_loop` logs that row every
``log_interval`` environment steps and after the last. Between two iterations the
trainer's state is whole: ``state_dict()`` then captures all of it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_training.config import TrainConfig
from rl_training.experiment.logging import Logger
from rl_training.hyperparams import Hyperparams
from rl_training.registry import AlgorithmSpec
from rl_training.runtime.distributed import Replicas, World, rank_seed
from rl_training.runtime.plan import Plan
from rl_training.runtime.seeding import resume_seed, seed_everything
from rl_training.runtime.signals import requested_stop
from rl_training.trainers.checkpoint import SavedModel
from rl_training.trainers.envs import EnvStepper, EpisodeTracker, make_vec_env

H = TypeVar("H", bound=Hyperparams)

Policy = Callable[[Any, bool, torch.Generator], np.ndarray]
"""``policy(obs_batch, deterministic, generator) -> env actions`` for evaluation (a
Dict space's batch: a dict of arrays)."""


class SpsTimer:
    """Environment steps per second since the start, for ``time/sps``."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def sps(self, steps: int) -> float:
        """Steps per second over the whole run so far."""
        return steps / max(time.perf_counter() - self._start, 1e-9)

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self._start


class PeriodicLog:
    """A trainer's training row with ``time/sps``, every ``interval`` environment steps.

    Called after every iteration; logs at the first call at or past each multiple of
    ``interval`` and at the end of the run, so the final values are always logged.
    The row's values may be device tensors: the logger copies them to the host in
    one transfer.
    """

    def __init__(self, logger: Logger, timer: SpsTimer, interval: int, total: int) -> None:
        self._logger = logger
        self._timer = timer
        self._interval = interval
        self._total = total
        self._next = interval

    def __call__(self, steps: int, values: Mapping[str, Any]) -> None:
        """Log ``values`` and ``time/sps`` if ``steps`` reached the next row or the end."""
        if self.due(steps):
            self.write(steps, values)

    def due(self, steps: int) -> bool:
        """Whether a row is due at ``steps``."""
        return steps >= self._next or steps >= self._total

    def write(self, steps: int, values: Mapping[str, Any]) -> None:
        """Log the row now; the next is due one interval on."""
        while self._next <= steps:
            self._next += self._interval
        self._logger.log_metrics({**values, "time/sps": self._timer.sps(steps)}, steps)

    def state_dict(self) -> dict[str, Any]:
        """The step of the next row."""
        return {"next": self._next}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._next = int(state["next"])


@dataclass
class Session(Generic[H]):
    """Everything a trainer gets from the run; it opens nothing of its own.

    Made by :meth:`open` from a resolved :class:`~rl_training.runtime.plan.Plan`;
    typed by the algorithm's hyperparameters (a PPO trainer gets a
    ``Session[PPOHyperparams]``).
    """

    plan: Plan
    """The config resolved for this machine."""
    hp: H
    """The algorithm's hyperparameters (``plan.hp``)."""
    logger: Logger
    """The run's logger: the only way a trainer writes metrics."""
    envs: gym.vector.VectorEnv
    """``hp.num_envs`` seeded environments (same-step autoreset)."""
    generator: torch.Generator
    """Source of the trainer's randomness, on ``device``."""
    episodes: EpisodeTracker
    """Logs finished episodes and keeps the recent returns."""
    stepper: EnvStepper
    """Steps ``envs``: the current observations and the step count."""
    timer: SpsTimer
    """For ``time/sps``."""
    log: PeriodicLog
    """Logs a training row every ``hp.log_interval`` environment steps."""
    replicas: Replicas | None = None
    """Under torchrun: the collectives with the other ranks (``None`` in one process)."""
    _exchanged_at: int = field(default=0, init=False, repr=False)
    """Vector steps at the last exchange: bounds the episodes a rank can hold since."""

    @staticmethod
    def open(plan: Plan, logger: Logger) -> Session[Any]:
        """Seed everything, make and reset the environments.

        Under torchrun each rank seeds its environments and generator apart
        (:func:`~rl_training.runtime.distributed.rank_seed`; rank 0 as one process
        would), steps count every rank's environments, and finished episodes wait
        for the next row to be exchanged.
        """
        config, hp, world = plan.config, plan.hp, plan.world
        seed = rank_seed(config.seed, world.rank)
        generator = seed_everything(seed, plan.device)
        envs = make_vec_env(config.env_id, hp.num_envs, seed)
        episodes = EpisodeTracker(hp.num_envs, logger, deferred=world.distributed,
                                  info_keys=config.info_keys)  # fmt: skip
        timer = SpsTimer()
        replicas = Replicas(world, plan.device) if world.distributed else None
        stepper = EnvStepper(
            envs, episodes, plan.device, seed, replicas=world.size, env_id=config.env_id,
            normalize_obs=hp.normalize_obs, normalize_reward=hp.normalize_reward,
            gamma=hp.gamma, merge=replicas.sum_ if replicas is not None else None,
        )  # fmt: skip
        return Session[Any](
            plan=plan,
            hp=hp,
            logger=logger,
            envs=envs,
            generator=generator,
            episodes=episodes,
            stepper=stepper,
            timer=timer,
            log=PeriodicLog(logger, timer, hp.log_interval, config.total_timesteps),
            replicas=replicas,
        )

    @property
    def world(self) -> World:
        """The processes training this run."""
        return self.plan.world

    @property
    def seed(self) -> int:
        """This rank's seed (the config's in one process)."""
        return rank_seed(self.plan.config.seed, self.plan.world.rank)

    def stop_requested(self) -> bool:
        """Whether to stop now (SIGINT/SIGTERM); under torchrun, whether any rank asked,
        which every rank learns at the same point."""
        if self.replicas is not None:
            return self.replicas.stop_agreed()
        return requested_stop() is not None

    def report(self, steps: int, values: Mapping[str, Any], *, flush: bool = False) -> None:
        """After an iteration: log the training row ``values`` if one is due.

        Under torchrun, a due row (or ``flush``: a checkpoint, an evaluation or the
        end is next) is one exchange between the ranks: the row averaged over them
        and every episode they finished since the last exchange, logged in step order.
        """
        if self.replicas is None:
            self.log(steps, values)
            return
        row_due = self.log.due(steps)
        if row_due or flush:
            self._exchange(steps, values if row_due else None)

    def flush(self) -> None:
        """Log the episodes the ranks finished since the last row (under torchrun)."""
        if self.replicas is not None:
            self._exchange(self.steps, None)

    def _exchange(self, steps: int, values: Mapping[str, Any] | None) -> None:
        assert self.replicas is not None
        vector_steps = self.stepper.vector_steps
        capacity = (vector_steps - self._exchanged_at) * self.hp.num_envs
        self._exchanged_at = vector_steps
        row, episodes = self.replicas.gather_row(values, self.episodes.take_pending(), capacity)
        for step, episode_return, length, *extras in episodes.tolist():
            self.episodes.record(int(step), episode_return, int(length), extras)
        if row is not None:
            self.log.write(steps, row)

    @property
    def config(self) -> TrainConfig:
        """The run's configuration."""
        return self.plan.config

    @property
    def device(self) -> torch.device:
        """Where networks, buffers and updates live."""
        return self.plan.device

    @property
    def total_timesteps(self) -> int:
        """The run's budget of environment steps."""
        return self.plan.config.total_timesteps

    @property
    def steps(self) -> int:
        """Environment steps so far, summed over environments."""
        return self.stepper.steps

    def state_dict(self) -> dict[str, Any]:
        """Step and episode counters, the generator and the logging cadence."""
        state = {
            "steps": self.stepper.steps,
            "episodes": self.episodes.state_dict(),
            "generator": self.generator.get_state(),
            "log": self.log.state_dict(),
        }
        stepper = self.stepper
        if stepper.obs_norm is not None:
            state["obs_norm"] = {k: v.clone() for k, v in stepper.obs_norm.state_dict().items()}
        if stepper.reward_norm is not None:
            state["reward_norm"] = stepper.reward_norm.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the environments keep their own state).

        A checkpoint holds rank 0's generator; under torchrun the other ranks
        draw theirs from their seed and the step.
        """
        self.stepper.steps = int(state["steps"])
        self.episodes.load_state_dict(state["episodes"])
        self.generator.set_state(state["generator"])
        if self.world.rank != 0:
            self.generator.manual_seed(resume_seed(self.seed, self.stepper.steps))
        self.log.load_state_dict(state["log"])
        self._exchanged_at = self.stepper.vector_steps
        stepper = self.stepper
        if stepper.obs_norm is not None:
            stepper.obs_norm.load_state_dict(state["obs_norm"])
            if stepper.raw_obs is not None:
                stepper.obs = stepper.obs_norm(stepper.raw_obs)
        if stepper.reward_norm is not None:
            stepper.reward_norm.load_state_dict(state["reward_norm"])

    def close(self) -> None:
        """Close the environments."""
        self.envs.close()


class Trainer(Protocol):
    """What every algorithm's trainer class provides (see :mod:`rl_training.registry`).

    ``__init__(session)`` builds the networks, optimisers and buffers on
    ``session.device``.
    """

    CPU_THREADS: ClassVar[int | None]
    """Intra-op threads while training on the CPU (``None``: leave torch's setting)."""
    SAVED_MODULES: ClassVar[tuple[str, ...]]
    """The modules (attributes) a model file holds; their names are also keys of
    ``state_dict()``."""

    def iteration(self) -> Mapping[str, Any]:
        """Collect, compute targets, optimise; return the training row's values."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The whole training state: tensors and plain containers only."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        ...


class TrainerClass(Protocol):
    """A trainer class: builds a :class:`Trainer` and rebuilds saved policies."""

    CPU_THREADS: int | None
    """Intra-op threads while training on the CPU."""
    SAVED_MODULES: tuple[str, ...]
    """The modules a model file holds."""

    def __call__(self, session: Session[Any]) -> Trainer: ...

    def load_policy(
        self,
        saved: SavedModel,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        device: torch.device,
    ) -> Policy:
        """Rebuild the trained policy from a saved model, on ``device``."""
        ...


def saved_modules(trainer: Trainer) -> dict[str, nn.Module]:
    """The trainer's modules that a model file holds, by name (with ``normalize_obs``,
    the observation statistics as ``"obs_norm"``)."""
    modules = {name: getattr(trainer, name) for name in trainer.SAVED_MODULES}
    session = getattr(trainer, "session", None)
    obs_norm = session.stepper.obs_norm if isinstance(session, Session) else None
    if obs_norm is not None:
        modules["obs_norm"] = obs_norm
    return modules


def trainer_class(spec: AlgorithmSpec) -> TrainerClass:
    """Import the trainer class that ``spec`` names."""
    module_name, _, class_name = spec.trainer.partition(":")
    cls: TrainerClass = getattr(importlib.import_module(module_name), class_name)
    return cls


def run_loop(
    session: Session[Any],
    trainer: Trainer,
    periodic: Sequence[tuple[int, Callable[[int], None]]] = (),
) -> bool:
    """Run ``trainer`` until the budget is spent or a stop is requested.

    After each iteration (a whole-state point) the training row is logged when due,
    each ``(every, call)`` of ``periodic`` is called with the step count whenever it
    passes a multiple of ``every`` (evaluation, checkpoints; ``every`` 0: never),
    and a stop request (SIGINT/SIGTERM, see :mod:`rl_training.runtime.signals`) ends
    the loop.

    Returns:
        ``True`` if the budget was spent, ``False`` if a stop was requested first.
    """
    total = session.total_timesteps
    periodic = [(every, call) for every, call in periodic if every > 0]
    while session.steps < total:
        if session.stop_requested():
            session.flush()
            return False
        before = session.steps
        values = trainer.iteration()
        steps = session.steps
        calls = [call for every, call in periodic if steps // every > before // every]
        session.report(steps, values, flush=bool(calls))
        for call in calls:
            call(steps)
    return True


# -- state -------------------------------------------------------------------------------


def state_of(owner: object, *names: str) -> dict[str, Any]:
    """``{name: state}`` of ``owner``'s attributes, for a trainer's ``state_dict``.

    Objects with a ``state_dict`` (modules, optimisers, buffers, the session) give
    theirs; tensors are copied; mappings are walked; plain values are taken as they are.
    """
    return {name: _state(getattr(owner, name)) for name in names}


def load_state(owner: object, state: Mapping[str, Any]) -> None:
    """Restore what :func:`state_of` captured, in place where the attribute allows it.

    Tensors are copied into (so views, such as flat parameters, stay views); objects
    with ``load_state_dict`` load; anything else is replaced.
    """
    for name, value in state.items():
        target = getattr(owner, name)
        if hasattr(target, "load_state_dict"):
            target.load_state_dict(value)
        elif isinstance(target, torch.Tensor):
            with torch.no_grad():
                target.copy_(value)
        else:
            setattr(owner, name, value)


def _state(value: Any) -> Any:
    if hasattr(value, "state_dict"):
        return value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {key: _state(item) for key, item in value.items()}
    return value


__all__ = [
    "PeriodicLog",
    "Policy",
    "Session",
    "SpsTimer",
    "Trainer",
    "TrainerClass",
    "load_state",
    "run_loop",
    "saved_modules",
    "state_of",
    "trainer_class",
]
