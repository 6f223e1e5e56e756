"""A run's lifecycle: open it (fresh or resumed), train in it, save, sum it up.

:func:`~rl_training.train` and :func:`~rl_training.resume` are built from the pieces
here: :func:`joined` (the process group under torchrun), :func:`open_resumed_run`
(check a run directory and open it again in place) and :func:`fit` (train in an
open run). When and where files are written is the
:class:`~rl_training.trainers.checkpoint.Checkpointer`'s; the loop that drives the
trainer is :func:`~rl_training.trainers.session.run_loop`.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError, NonFiniteError
from rl_training.experiment.logging import RowObserver
from rl_training.experiment.media import Histogram
from rl_training.experiment.run import TrainingRun, lock_run, reopen_training_run
from rl_training.registry import get_spec
from rl_training.runtime.context import RunContext, RunFiles, check_no_links, read_run_file
from rl_training.runtime.device import resolve_device
from rl_training.runtime.distributed import (
    World,
    check_supported,
    current_world,
    launch_world,
    opened_by_rank_zero,
    process_group,
)
from rl_training.runtime.plan import Plan, resolve_plan
from rl_training.runtime.seeding import resume_seed
from rl_training.runtime.signals import interrupt_for, requested_stop
from rl_training.trainers.checkpoint import Checkpoint, Checkpointer
from rl_training.trainers.evaluation import PeriodicEvaluator
from rl_training.trainers.observations import layout
from rl_training.trainers.session import Session, Trainer, run_loop, saved_modules, trainer_class
from rl_training.trainers.video import PeriodicVideo

RESULT_WINDOW = 20
"""Episodes :attr:`TrainResult.mean_return` averages (the contract's "last 20")."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`~rl_training.train` and :func:`~rl_training.resume` return."""

    run_dir: Path
    """The run directory (metrics, TensorBoard events, ``model.pt``)."""
    steps: int
    """Environment steps taken."""
    wall_time_s: float
    """Seconds from the start of training to the saved model."""
    mean_return: float
    """Mean return of the last :data:`RESULT_WINDOW` (20) training episodes (NaN if
    none finished). Not ``episode/return_mean`` nor ``run.json``'s
    ``summary.mean_return``: those average the last 100."""
    episodes: int
    """Training episodes finished."""


@runtime_checkable
class RunObserver(Protocol):
    """Watches a run: told when it is open, then given every row (after the sinks).

    The command line's progress display is one. A plain :data:`RowObserver` (a
    callable taking each row) works too: it is only given the rows.
    """

    def run_opened(self, run: TrainingRun) -> None:
        """The run is open (its directory exists); training starts next."""

    def __call__(self, metrics: Any, step: int) -> None:
        """One row, as the sinks got it."""


def observe(run: TrainingRun, observer: RowObserver | RunObserver | None) -> None:
    """Attach ``observer`` to ``run``: tell it the run is open, give it every row."""
    if observer is None:
        return
    if isinstance(observer, RunObserver):
        observer.run_opened(run)
    run.logger.add_observer(observer)


@contextlib.contextmanager
def joined(algo: str, device: str) -> Iterator[World]:
    """Under torchrun, the block runs in the run's process group (joined, then left).

    An algorithm that cannot train on several processes is refused first.

    Raises:
        ValueError: that algorithm, or a device that does not exist here.
    """
    world = launch_world()
    check_supported(algo, get_spec(algo).distributed, world)
    with process_group(world, resolve_device(device, world)):
        yield world


# -- continuing a run ---------------------------------------------------------------------


def open_resumed_run(
    run_dir: Path,
    total_timesteps: int | None,
    checkpoint: Checkpoint,
    *,
    device: str | None = None,
    strict: bool = False,
) -> TrainingRun:
    """Check that ``run_dir`` can be resumed from ``checkpoint``, lock it, open it in place.

    Everything is checked before anything in the directory changes: the lock, that
    ``run.json`` is readable and the checkpoint is this run's, the budget, and the
    config against this machine (env, device, the env's spaces against the
    checkpoint's). Under torchrun, rank 0 checks and opens the run and the other
    ranks follow it; the run must be resumed by as many processes as it was trained by.

    Raises:
        ValueError: the run already finished and no larger budget was given, the new
            budget is not above the checkpoint's step, the checkpoint belongs to
            another run, ``run.json`` is malformed, the env or device is not available,
            another number of processes, or the run is in use by a live process;
            nothing changed on disk.
    """
    world = current_world("open_resumed_run")

    def follow(config: TrainConfig) -> TrainingRun:
        context = RunContext(config=config, run_dir=run_dir, resume_step=checkpoint.step)
        return TrainingRun.follower(context, resolve_plan(config, world), world)

    return opened_by_rank_zero(
        world,
        lambda: _reopen(run_dir, total_timesteps, device, strict, checkpoint, world),
        lambda run: run.plan.config if run.plan is not None else None,
        follow,
    )


def _reopen(
    run_dir: Path,
    total_timesteps: int | None,
    device: str | None,
    strict: bool,
    checkpoint: Checkpoint,
    world: World,
) -> TrainingRun:
    trained_by = int(checkpoint.extra.get("world_size", 1))
    if trained_by != world.size:
        raise ConfigError(
            f"run {run_dir} was trained by {trained_by} process(es) and this launch has "
            f"{world.size}; resume it with the same number (torchrun --nproc_per_node, "
            "--nnodes)"
        )
    lock = lock_run(run_dir)
    try:
        check_no_links(RunFiles(run_dir))
        info = read_run_info(run_dir)
        check_same_run(run_dir, info, checkpoint)
        config = resumed_config(run_dir, total_timesteps, checkpoint, device=device, info=info)
        plan = resolve_plan(config, world)
        _check_spaces(run_dir, plan, checkpoint)
        return reopen_training_run(
            run_dir, config, checkpoint.step, lock, strict=strict, info=info, plan=plan
        )
    except BaseException:
        lock.release()
        raise


def resumed_config(
    run_dir: Path,
    total_timesteps: int | None,
    checkpoint: Checkpoint,
    *,
    device: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The run's config from its checkpoint, with the new budget and device if given.

    A run whose budget is spent but whose ``run.json`` does not say ``"finished"``
    (it failed writing its model) resumes without a larger budget: to save its model.

    Raises:
        ValueError: the run finished and no larger budget was given, or the budget
            is not above the checkpoint's step.
    """
    step, fields = checkpoint.step, dict(checkpoint.config)
    finished = (info or {}).get("status") == "finished" or info is None
    if total_timesteps is None:
        if step >= fields["total_timesteps"] and finished:
            raise ConfigError(
                f"run {run_dir} already finished at step {step}; pass a larger "
                "total_timesteps (--total-timesteps) to train it further"
            )
    elif total_timesteps <= step:
        raise ConfigError(
            f"total_timesteps: {total_timesteps} must be above the checkpoint's step "
            f"{step} to resume {run_dir}"
        )
    else:
        fields["total_timesteps"] = total_timesteps
    if device is not None:
        fields["device"] = device
    return TrainConfig(**fields, output_dir=run_dir.parent)


def read_run_info(run_dir: Path) -> dict[str, Any] | None:
    """``run.json`` of ``run_dir``; ``None`` if there is none.

    Raises:
        ValueError: it is there but not a JSON object (it is never replaced silently).
    """
    path = RunFiles(run_dir).run_info
    try:
        text = read_run_file(path)
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError as error:
        raise ConfigError(
            f"{path} is not valid JSON ({error}); fix or remove it to resume"
        ) from None
    if not isinstance(info, dict):
        raise ConfigError(
            f"{path} holds a {type(info).__name__}, not a JSON object; fix or remove it"
        )
    return info


def check_same_run(run_dir: Path, info: Mapping[str, Any] | None, checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint that another run wrote (copied into this directory).

    A checkpoint names its run (``run_id``, as ``run.json`` does); checkpoints and
    runs of earlier versions, without one, are compared by algorithm, env and seed.

    Raises:
        ValueError: naming both runs.
    """
    if info is None:
        return
    theirs, ours = checkpoint.extra.get("run_id"), info.get("run_id")
    fields = ("algo", "env_id", "seed")
    if theirs is not None and ours is not None:
        foreign = theirs != ours
    else:
        foreign = any(k in info and info[k] != checkpoint.config.get(k) for k in fields)
    if foreign:
        raise ConfigError(
            f"{RunFiles(run_dir).checkpoint} belongs to another run "
            f"({', '.join(f'{k} {checkpoint.config.get(k)!r}' for k in fields)}), not to "
            f"{run_dir.name} ({', '.join(f'{k} {info.get(k)!r}' for k in fields)}); "
            "resume the run it came from"
        )


def _check_spaces(run_dir: Path, plan: Plan, checkpoint: Checkpoint) -> None:
    """Refuse an env whose spaces are no longer the ones the run was trained on."""
    for kind, now, then in (
        ("observation", plan.observation_space, checkpoint.observation_space),
        ("action", plan.action_space, checkpoint.action_space),
    ):
        if now != then:
            raise ConfigError(
                f"env {plan.config.env_id!r} now has the {kind} space {now}; run "
                f"{run_dir.name} was trained on {then} and cannot continue on it"
            )


# -- training in an open run --------------------------------------------------------------


def weight_histograms(trainer: Trainer) -> dict[str, Histogram]:
    """``weights/<network>/<parameter>``: a histogram of each parameter of each network
    a model holds (``--histogram-every``), copied to the host in the composite's one
    transfer per call."""
    return {
        f"weights/{network}/{name}": Histogram(parameter.detach())
        for network, module in saved_modules(trainer).items()
        for name, parameter in module.named_parameters()
    }


def fit(run: TrainingRun, checkpoint: Checkpoint | None = None) -> TrainResult:
    """Train in an open run and save its model; the caller closes the run.

    Checkpoints are written every ``config.checkpoint_interval`` steps, when a stop
    is requested (then ``KeyboardInterrupt``, or ``Terminated`` for SIGTERM, is
    raised, so the run closes ``"interrupted"``) and at the end; evaluations every
    ``config.eval_every`` steps. ``run.summary`` is set however training ends.

    Args:
        run: An open run made by :func:`create_training_run` (or a resume).
        checkpoint: A checkpoint to continue from.

    Raises:
        ValueError: the run was not made for a built-in algorithm (it has no plan).
        KeyboardInterrupt: a stop was requested; the checkpoint is written.
    """
    plan = _plan_of(run)
    trainer_cls = trainer_class(plan.spec)
    start = time.perf_counter()
    # a CNN's convolutions gain from every core, whatever the trainer's MLPs prefer
    threads = None if layout(plan.observation_space).has_images else trainer_cls.CPU_THREADS
    with _cpu_threads(plan.device, threads), _session(plan, run) as session:
        first_step = session.steps
        evaluator: PeriodicEvaluator | None = None
        video: PeriodicVideo | None = None
        replicas: dict[str, Any] = {}
        try:
            # Build the trainer (and its evaluator), or continue from the checkpoint
            trainer = trainer_cls(session)
            evaluator = _evaluator(run, plan, trainer_cls, trainer)
            checkpointer = _checkpointer(run, plan)
            if checkpoint is not None:
                _restore(session, trainer, evaluator, checkpoint)
                first_step = session.steps
            if session.replicas is not None:  # every rank starts from rank 0's weights
                session.replicas.broadcast_(_module_tensors(trainer))

            # Train, evaluating and checkpointing on the way; never from non-finite weights
            run.logger.add_observer(_finite_losses)

            def save(steps: int) -> None:
                _check_finite_weights(trainer, steps)
                extra = {"evaluation": evaluator.state_dict()} if evaluator is not None else {}
                checkpointer.save(steps, trainer.state_dict, extra)

            def histograms(steps: int) -> None:
                run.logger.log_metrics(weight_histograms(trainer), steps)

            if plan.config.video_every and plan.world.is_writer:
                video = PeriodicVideo(plan, trainer_cls, trainer, run.logger)

            start = time.perf_counter()
            finished = run_loop(
                session, trainer, [(plan.config.eval_every, evaluator or _never),
                                   (plan.config.checkpoint_interval, save),
                                   (plan.config.histogram_every, histograms),
                                   (plan.config.video_every if video else 0, video or _never)],
            )  # fmt: skip
            if video is not None and finished:
                video.finish()  # the last videos, before the model and the run end
            replicas = _replica_check(session, trainer)

            # Save: the checkpoint always, the model only when the budget was spent
            save(session.steps)
            if not finished:
                signum = requested_stop()
                # Under torchrun the stop may be another rank's (torchrun sends SIGTERM).
                raise interrupt_for(signum if signum is not None else signal.SIGTERM)
            _check_finite_weights(trainer, session.steps)
            checkpointer.save_model(
                algo=plan.spec.name, hyperparams=plan.hp, modules=saved_modules(trainer)
            )
            wall_time = time.perf_counter() - start
        finally:
            run.summary = _summary(session, first_step, time.perf_counter() - start, evaluator)
            if replicas:
                run.summary["replicas"] = replicas
            if evaluator is not None:
                evaluator.close()
            if video is not None:
                video.close()
    return TrainResult(
        run_dir=run.run_dir,
        steps=session.steps,
        wall_time_s=wall_time,
        mean_return=session.episodes.mean_return_last(RESULT_WINDOW),
        episodes=session.episodes.count,
    )


def _finite_losses(metrics: Mapping[str, Any], step: int) -> None:
    """Stop the run at the first logged loss that is NaN or infinite (a row observer)."""
    for key, value in metrics.items():
        if key.startswith("loss/") and isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(
                f"{key} is {value} at step {step}: training diverged (a NaN or infinite "
                "observation or reward, or too large a learning rate); the run's files "
                "keep the last finite weights"
            )


def _check_finite_weights(trainer: Trainer, step: int) -> None:
    """Raise before anything is saved from weights that are NaN or infinite.

    One host sync for all the modules; run when a checkpoint or model is written.
    """
    modules = saved_modules(trainer)
    tensors = [p.detach().reshape(-1) for m in modules.values() for p in m.parameters()]
    if not tensors or bool(torch.isfinite(torch.cat(tensors)).all()):
        return
    name = next(
        f"{module_name}.{param_name}"
        for module_name, module in modules.items()
        for param_name, param in module.named_parameters()
        if not bool(torch.isfinite(param).all())
    )
    raise NonFiniteError(
        f"weights {name} are not finite at step {step}: training diverged; the run's "
        "files keep the last finite weights"
    )


def _plan_of(run: TrainingRun) -> Plan:
    if run.plan is None:
        raise ConfigError(
            "fit() needs a run made by create_training_run(config) for a built-in algorithm"
        )
    return run.plan


@contextlib.contextmanager
def _session(plan: Plan, run: TrainingRun) -> Iterator[Session[Any]]:
    """The trainer's session: seeded, its environments made; closed at the end."""
    session = Session.open(plan, run.logger)
    try:
        yield session
    finally:
        session.close()


def _evaluator(
    run: TrainingRun, plan: Plan, trainer_cls: Any, trainer: Trainer
) -> PeriodicEvaluator | None:
    """The periodic evaluator when ``eval_every`` asks for one (on the writing rank)."""
    if not plan.config.eval_every or not plan.world.is_writer:
        return None
    best = run.run_context.files.best_model
    return PeriodicEvaluator(plan, trainer_cls, trainer, run.logger, best)


def _checkpointer(run: TrainingRun, plan: Plan) -> Checkpointer:
    return Checkpointer(
        run.run_context.files,
        config=plan.config,
        spaces=(plan.observation_space, plan.action_space),
        writer=plan.world.is_writer,
        world_size=plan.world.size,
        run_id=run.run_id,
    )


def _restore(
    session: Session[Any],
    trainer: Trainer,
    evaluator: PeriodicEvaluator | None,
    checkpoint: Checkpoint,
) -> None:
    """Continue from ``checkpoint``: the trainer's state, the evaluator's best so far."""
    trainer.load_state_dict(checkpoint.trainer)
    if evaluator is not None and "evaluation" in checkpoint.extra:
        evaluator.load_state_dict(checkpoint.extra["evaluation"])
    # Environments are not in a checkpoint: they restart, seeded from the seed and
    # the step, so resuming one checkpoint twice gives one history.
    session.stepper.reset(resume_seed(session.seed, session.steps))


def _never(steps: int) -> None:
    """A periodic call that is never due (its interval is 0)."""


def _replica_check(session: Session[Any], trainer: Trainer) -> dict[str, Any]:
    """Under torchrun: how far the ranks' weights drifted apart (they must not)."""
    if session.replicas is None:
        return {}
    return {
        "world_size": session.world.size,
        "max_weight_difference": session.replicas.weight_difference(_module_tensors(trainer)),
    }


def _module_tensors(trainer: Trainer) -> list[torch.Tensor]:
    """Every tensor of the trainer's saved modules (parameters and buffers)."""
    return [t for m in saved_modules(trainer).values() for t in m.state_dict().values()]


def _summary(
    session: Session[Any], first_step: int, wall_time: float, evaluator: PeriodicEvaluator | None
) -> dict[str, Any]:
    """``run.json``'s summary: the run's steps and episodes, this attempt's time and rate.

    Its ``mean_return`` is the mean of the last 100 episodes, as ``episode/return_mean``.
    """
    return_mean = session.episodes.return_mean
    summary: dict[str, Any] = {
        "steps": session.steps,
        "wall_time_s": round(wall_time, 3),
        "sps": round((session.steps - first_step) / wall_time, 1) if wall_time > 0 else None,
        "episodes": session.episodes.count,
        "mean_return": None if math.isnan(return_mean) else return_mean,
    }
    if evaluator is not None and math.isfinite(evaluator.best_return):
        summary["best_eval_return"] = evaluator.best_return
    return summary


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads while training on the CPU, then restore.

    Each trainer says how many it wants (``CPU_THREADS``); see its docstring for why.
    """
    if device.type != "cpu" or threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = [
    "RESULT_WINDOW",
    "RunObserver",
    "TrainResult",
    "fit",
    "joined",
    "observe",
    "open_resumed_run",
    "resumed_config",
]
