"""The public entry points of the trainers: :func:`train` and :func:`evaluate`.

Which trainer runs an algorithm is in :mod:`rl_training.registry`; how a trainer is
driven is in :mod:`rl_training.trainers.session`.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.experiment.logging import CompositeLogger, RowObserver
from rl_training.registry import get_spec
from rl_training.runtime.context import RunContext
from rl_training.runtime.device import resolve_device
from rl_training.runtime.distributed import (
    World,
    check_supported,
    current_world,
    launch_world,
    opened_by_rank_zero,
    process_group,
)
from rl_training.runtime.plan import resolve_plan
from rl_training.runtime.run_utils import (
    TrainingRun,
    create_training_run,
    lock_run,
    reopen_training_run,
)
from rl_training.runtime.seeding import resume_seed
from rl_training.runtime.signals import graceful_stop, interrupt_for, requested_stop
from rl_training.trainers.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, save_model
from rl_training.trainers.evaluation import (
    EvalResult,
    PeriodicEvaluator,
    TrainedPolicy,
    evaluate,
    load_policy,
)
from rl_training.trainers.session import Session, run_loop, saved_modules, trainer_class


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    """The run directory (metrics, TensorBoard events, ``model.pt``)."""
    steps: int
    """Environment steps taken."""
    wall_time_s: float
    """Seconds from the start of training to the saved model."""
    mean_return: float
    """Mean return of the last 20 training episodes (NaN if none finished)."""
    episodes: int
    """Training episodes finished."""


def train(
    config: TrainConfig,
    run_suffix: str | None = None,
    *,
    strict: bool = False,
    progress: RowObserver | None = None,
) -> TrainResult:
    """Run one training run end to end through :func:`create_training_run`.

    Checks everything first (sinks, device, env id, spaces) so that bad input leaves
    no run directory; trains; saves ``model.pt``; closes the run ``"finished"``, or
    ``"failed"`` / ``"interrupted"`` if training raises.

    Args:
        config: The run.
        run_suffix: Appended to the run directory's name.
        strict: A sink that raises stops training instead of being dropped.
        progress: Called with every row the trainer logs (after the sinks got it).

    Under torchrun, every process calls it: they join the process group (and
    leave it at the end), rank 0 writes the one run, and the model trains on all.

    Raises:
        ConfigError: a bad config for this machine (a ``ValueError``; nothing is written).
    """
    with graceful_stop(), joined(config.algo, config.device):
        with create_training_run(config, run_suffix, strict=strict) as run:
            if progress is not None:
                run.logger.add_observer(progress)
            return fit(run)


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


def resume(
    run_dir: str | Path,
    *,
    total_timesteps: int | None = None,
    strict: bool = False,
    progress: RowObserver | None = None,
) -> TrainResult:
    """Continue a run in its own directory from its checkpoint.

    Algorithm, env, seed and hyperparameters come from the checkpoint; only the
    budget may grow. Every sink continues one history from the checkpoint's step S:
    what the earlier attempt logged after S is dropped. ``run.json`` records the
    resume and the new status.

    Args:
        run_dir: A run directory holding ``checkpoint.pt``.
        total_timesteps: A new budget (larger than S); by default the run's own.
        strict: A sink that raises stops training instead of being dropped.
        progress: Called with every row logged (after the sinks got it).

    Raises:
        FileNotFoundError: ``run_dir`` holds no checkpoint.
        ValueError: the run already finished and no larger budget was given, the new
            budget is not above S, or the run is in use by a live process; nothing
            changed on disk.
    """
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    with graceful_stop(), joined(checkpoint.config["algo"], checkpoint.config["device"]):
        run, checkpoint = open_resumed_run(
            run_dir, total_timesteps, strict=strict, checkpoint=checkpoint
        )
        with run:
            if progress is not None:
                run.logger.add_observer(progress)
            return fit(run, checkpoint)


def open_resumed_run(
    run_dir: Path,
    total_timesteps: int | None,
    *,
    strict: bool = False,
    checkpoint: Checkpoint | None = None,
) -> tuple[TrainingRun, Checkpoint]:
    """Check that ``run_dir`` can be resumed, lock it and open it again in place.

    Returns the open run and the checkpoint to continue from (see :func:`resume`).
    Under torchrun, rank 0 checks and opens the run and the other ranks follow it;
    the run must be resumed by as many processes as it was trained by.
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    world = current_world("open_resumed_run")
    loaded = checkpoint

    def follow(config: TrainConfig) -> TrainingRun:
        context = RunContext(config=config, run_dir=run_dir, resume_step=loaded.step)
        plan = resolve_plan(config, world)
        return TrainingRun(context, CompositeLogger({}), plan, writer=False, world=world)

    run = opened_by_rank_zero(
        world,
        lambda: _open_resumed_run(run_dir, total_timesteps, strict, loaded, world),
        lambda run: run.plan.config if run.plan is not None else None,
        follow,
    )
    return run, checkpoint


def _open_resumed_run(
    run_dir: Path,
    total_timesteps: int | None,
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
        step, fields = checkpoint.step, dict(checkpoint.config)
        status = _run_status(run_dir)
        if total_timesteps is None:
            if status == "finished" or step >= fields["total_timesteps"]:
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
        config = TrainConfig(**fields, output_dir=run_dir.parent)
        return reopen_training_run(run_dir, config, step, lock, strict=strict)
    except BaseException:
        lock.release()
        raise


def _run_status(run_dir: Path) -> str | None:
    try:
        status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, str) else None


def fit(run: TrainingRun, checkpoint: Checkpoint | None = None) -> TrainResult:
    """Train in an open run and save its model; the caller closes the run.

    This is :func:`train` without the run setup, for callers that need the run
    directory before training starts (the command line prints it on Ctrl-C).
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
    plan = run.plan
    if plan is None:
        raise ConfigError(
            "fit() needs a run made by create_training_run(config) for a built-in algorithm"
        )
    config, world = plan.config, plan.world
    spaces = (plan.observation_space, plan.action_space)
    trainer_cls = trainer_class(plan.spec)
    start = time.perf_counter()
    with _cpu_threads(plan.device, trainer_cls.CPU_THREADS):
        session = Session.open(plan, run.logger)
        first_step = session.steps
        evaluator: PeriodicEvaluator | None = None
        replica_check: dict[str, Any] = {}
        try:
            trainer = trainer_cls(session)
            if config.eval_every and world.is_writer:
                best = run.run_context.run_dir / "best_model.pt"
                evaluator = PeriodicEvaluator(plan, trainer_cls, trainer, run.logger, best)
            if checkpoint is not None:
                trainer.load_state_dict(checkpoint.trainer)
                if evaluator is not None and "evaluation" in checkpoint.extra:
                    evaluator.load_state_dict(checkpoint.extra["evaluation"])
                # Environments are not in a checkpoint: they restart, seeded from the
                # seed and the step, so resuming one checkpoint twice gives one history.
                session.stepper.reset(resume_seed(session.seed, session.steps))
                first_step = session.steps
            if session.replicas is not None:  # every rank starts from rank 0's weights
                session.replicas.broadcast_(_module_tensors(trainer))
            written = {"step": -1}

            def save(steps: int) -> None:
                if written["step"] != steps and world.is_writer:
                    extra: dict[str, Any] = {"world_size": world.size}
                    if evaluator is not None:
                        extra["evaluation"] = evaluator.state_dict()
                    save_checkpoint(
                        run.run_context.checkpoint_path, config=config, step=steps,
                        state=trainer.state_dict(), spaces=spaces, extra=extra,
                    )  # fmt: skip
                    written["step"] = steps

            def evaluate_now(steps: int) -> None:
                if evaluator is not None:
                    evaluator(steps)

            start = time.perf_counter()
            finished = run_loop(
                session,
                trainer,
                [(config.eval_every, evaluate_now), (config.checkpoint_interval, save)],
            )
            if session.replicas is not None:
                replica_check["world_size"] = world.size
                replica_check["max_weight_difference"] = session.replicas.weight_difference(
                    _module_tensors(trainer)
                )
            save(session.steps)
            if not finished:
                signum = requested_stop()
                # Under torchrun the stop may be another rank's (torchrun sends SIGTERM).
                raise interrupt_for(signum if signum is not None else signal.SIGTERM)
            if world.is_writer:
                save_model(
                    run.run_context.model_path,
                    algo=plan.spec.name,
                    env_id=config.env_id,
                    hyperparams=plan.hp,
                    modules=saved_modules(trainer),
                    observation_space=plan.observation_space,
                    action_space=plan.action_space,
                )
            wall_time = time.perf_counter() - start
        finally:
            run.summary = _summary(session, first_step, time.perf_counter() - start, evaluator)
            if replica_check:
                run.summary["replicas"] = replica_check
            if evaluator is not None:
                evaluator.close()
            session.close()
    return TrainResult(
        run_dir=run.run_dir,
        steps=session.steps,
        wall_time_s=wall_time,
        mean_return=session.episodes.mean_return,
        episodes=session.episodes.count,
    )


def _module_tensors(trainer: Any) -> list[torch.Tensor]:
    """Every tensor of the trainer's saved modules (parameters and buffers)."""
    return [t for m in saved_modules(trainer).values() for t in m.state_dict().values()]


def _summary(
    session: Session[Any], first_step: int, wall_time: float, evaluator: PeriodicEvaluator | None
) -> dict[str, Any]:
    """``run.json``'s summary: the run's steps and episodes, this attempt's time and rate."""
    summary: dict[str, Any] = {
        "steps": session.steps,
        "wall_time_s": round(wall_time, 3),
        "sps": round((session.steps - first_step) / wall_time, 1) if wall_time > 0 else None,
        "episodes": session.episodes.count,
        "mean_return": None if math.isnan(r := session.episodes.return_mean) else r,
    }
    if evaluator is not None and math.isfinite(evaluator.best_return):
        summary["best_eval_return"] = evaluator.best_return
    return summary


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads while training on the CPU, then restore.

    The on-policy trainers and DQN ask for one: with layers this small, splitting
    each matmul across threads costs more in hand-offs than it saves (measured with
    benchmarks/bench_speed.py). SAC and TD3 keep torch's default.
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
    "EvalResult",
    "TrainResult",
    "TrainedPolicy",
    "evaluate",
    "fit",
    "load_policy",
    "resume",
    "train",
]
