"""Run setup: a fresh run directory, the sinks for it, and ``run.json``.

Every run is opened by :func:`open_run`: :func:`create_training_run` and
:func:`create_run` make a new directory for it (:func:`_new_run`), a resume reopens an
existing one (:func:`reopen_training_run`). The contract's import path,
:mod:`rl_training.runtime.run_utils`, re-exports this module.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import importlib.metadata as metadata
import os
import platform
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rl_training.config import DEFAULT_LOG_SINKS, TrainConfig, sink_names
from rl_training.errors import ConfigError
from rl_training.experiment.logging import (
    STATUSES,
    CompositeLogger,
    Sink,
    closing_status,
    normalize_config,
)
from rl_training.plugins import PluginManager, SinkInfo, discover_sinks
from rl_training.runtime.context import (
    RunContext,
    RunLock,
    json_bytes,
    remove_stray_temporaries,
    rewrite_in_place,
    write_json_atomic,
)
from rl_training.runtime.distributed import (
    World,
    checked_on_every_rank,
    current_world,
    opened_by_rank_zero,
)
from rl_training.runtime.plan import Plan, resolve_plan
from rl_training.runtime.signals import shielded

_SUFFIX_RE = re.compile(r"[A-Za-z0-9_.+=-]+")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.+=-]+")
_NAME_MAX = 255
"""Bytes in a file name on the usual file systems (ext4, xfs, tmpfs, APFS...)."""


class SinkCreationError(RuntimeError):
    """A sink's factory failed while the run was being created; nothing was left behind."""


def create_run_context(config: TrainConfig, run_suffix: str | None = None) -> RunContext:
    """Make a new run directory (and its ``tensorboard/``) under ``config.output_dir``.

    The name reads ``<algo>-<env id>-s<seed>-<UTC time>[-<suffix>]``. Directories are
    made with an exclusive create, so two calls or two processes never get the same
    one; a clash adds ``-2``, ``-3``, ... An existing directory is never reused.

    Raises:
        ValueError: ``run_suffix`` holds characters that are unsafe in a file name.
    """
    _check_suffix(run_suffix)
    return _new_context(Path(config.output_dir), _name_prefix(config), run_suffix, config)


def _check_suffix(run_suffix: str | None) -> None:
    if run_suffix is not None and not _SUFFIX_RE.fullmatch(run_suffix):
        raise ConfigError(
            f"run_suffix: {run_suffix!r} is not a safe directory-name part "
            "(accepted: letters, digits and _ . + = -)"
        )


def _name_prefix(config: TrainConfig) -> str:
    return f"{config.algo}-{_UNSAFE_RE.sub('_', config.env_id)}-s{config.seed}"


def _new_context(
    output_dir: Path, prefix: str, run_suffix: str | None, config: TrainConfig | dict[str, Any]
) -> RunContext:
    """A new run directory (:func:`_make_run_dir`) with its ``tensorboard/``."""
    context = RunContext(config=config, run_dir=_make_run_dir(output_dir, prefix, run_suffix))
    try:
        context.tensorboard_dir.mkdir()
    except BaseException:
        context.run_dir.rmdir()
        raise
    return context


def _make_run_dir(output_dir: Path, prefix: str, run_suffix: str | None) -> Path:
    """``output_dir / <prefix>-<UTC time>[-<suffix>]``, made exclusively (``-2``... on a clash).

    Raises:
        ValueError: ``output_dir`` is a file, or the name would be too long.
        OSError: the directory cannot be made.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir: {str(output_dir)!r} is a file, not a directory")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{prefix}-{stamp}" + (f"-{run_suffix}" if run_suffix else "")
    if len(os.fsencode(base)) > _NAME_MAX - 4:  # room for a "-NNN" clash suffix
        raise ConfigError(
            f"run_suffix: the run directory's name would be {len(os.fsencode(base))} bytes "
            f"({base[:40]}...); file systems take {_NAME_MAX}: use a shorter name or suffix"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        run_dir = output_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            run_dir.mkdir()  # exclusive: FileExistsError if anyone made it first
            return run_dir
        except FileExistsError:
            attempt += 1


class TrainingRun:
    """An open run: its :class:`RunContext`, its :class:`CompositeLogger`, its ``run.json``.

    Use it as a context manager; leaving by an exception closes it ``"failed"``, by
    ``KeyboardInterrupt`` ``"interrupted"``. While it is open it holds the run
    directory's lock, so no other process can resume the same run.

    Under torchrun, ranks other than 0 hold a run that writes nothing
    (``writer=False``): the same ``run_dir``, a logger without sinks that accepts
    every call, no ``run.json``, no lock.
    """

    def __init__(
        self,
        run_context: RunContext,
        logger: CompositeLogger,
        plan: Plan | None = None,
        *,
        lock: RunLock | None = None,
        info: dict[str, Any] | None = None,
        writer: bool = True,
        world: World | None = None,
    ) -> None:
        self.run_context = run_context
        """Where the run writes."""
        self.logger = logger
        """The composite over the configured sinks."""
        self.plan = plan
        """The config resolved for this machine (device, spaces, hyperparameters), for
        the built-in trainers; ``None`` for a run of other training code."""
        self.status = "running"
        """``"running"`` until closed, then the closing status."""
        self.summary: dict[str, Any] | None = None
        """What the run achieved (steps, wall time, episodes, returns...), written to
        ``run.json`` as ``"summary"`` when the run closes; set by the trainers."""
        self.writer = writer
        """Whether this process writes the run (rank 0 under torchrun)."""
        self.world = world if world is not None else World()
        """The processes of the run."""
        self._lock = lock
        self._info: dict[str, Any] = {}
        if not writer:
            return
        self._info = normalize_config(
            info or _run_info(run_context, logger.sink_names, self.world.size)
        )
        write_json_atomic(run_context.run_info_path, self._info)

    @classmethod
    def follower(cls, context: RunContext, plan: Plan | None, world: World) -> TrainingRun:
        """The run as a rank other than 0 holds it under torchrun: it writes nothing."""
        return cls(context, CompositeLogger({}), plan, writer=False, world=world)

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.run_context.run_dir

    @property
    def run_id(self) -> str | None:
        """The run's id in ``run.json`` (``None`` in processes that do not write the run):
        checkpoints carry it, so that a resume can tell a copied-in checkpoint."""
        run_id = self._info.get("run_id")
        return run_id if isinstance(run_id, str) else None

    def close(self, status: str = "finished") -> None:
        """Flush and close every sink, record ``status`` in ``run.json``, release the lock.

        A second call does nothing. A second Ctrl-C while closing is ignored, so every
        sink is closed.

        Raises:
            ValueError: ``status`` is not ``"finished"``, ``"failed"`` or ``"interrupted"``.
            OSError: ``run.json`` could not be written (the sinks are closed all the same).
        """
        if status not in STATUSES:
            raise ConfigError(f"status: {status!r} is not one of {', '.join(map(repr, STATUSES))}")
        if self.status != "running":
            return
        self.status = status
        if not self.writer:
            self.logger.close(status)
            return
        with shielded():
            try:
                self.logger.close(status)
            finally:
                try:
                    _remove_if_empty(self.run_context.tensorboard_dir)
                    self._info.update(status=status, end_time=_utc_now())
                    self._info["sinks"] = self.logger.delivery_stats()
                    if self.summary is not None:
                        self._info["summary"] = normalize_config(self.summary)
                    _write_run_info(self.run_context.run_info_path, self._info)
                finally:
                    if self._lock is not None:
                        self._lock.release()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(closing_status(exc_type))


class RunInUseError(ConfigError):
    """The run directory is open in another, live process."""


def create_training_run(
    config: TrainConfig,
    run_suffix: str | None = None,
    *,
    strict: bool = False,
    plugin_manager: PluginManager | None = None,
) -> TrainingRun:
    """Check the config against this machine, make the run directory, open every sink.

    Everything that can be checked is checked before anything touches disk; a sink
    whose factory fails removes what was made. The config is logged once.

    Args:
        config: The run.
        run_suffix: Appended to the run directory's name.
        strict: A sink that raises stops the run instead of being dropped with a warning.
        plugin_manager: Where to find sinks (a fresh one by default).

    Raises:
        ValueError: a sink name is unknown or clashing (the message lists the available
            sinks), CUDA is asked for and absent, the env id is unknown, or the env's
            spaces do not fit the algorithm.
        SinkCreationError: a sink's factory raised (the message names the sink).
        OSError: the run directory cannot be made (nothing is left behind).
    """
    world = current_world("create_training_run")
    infos, plan = checked_on_every_rank(
        world,
        lambda: (discover_sinks(plugin_manager).resolve(config.log_sinks),
                 resolve_plan(config, world)),
    )  # fmt: skip
    _check_suffix(run_suffix)
    return opened_by_rank_zero(
        world,
        lambda: _new_run(Path(config.output_dir), _name_prefix(config), run_suffix, config,
                         sinks=infos, plan=plan, strict=strict),
        lambda run: str(run.run_dir),
        lambda run_dir: TrainingRun.follower(
            RunContext(config=config, run_dir=Path(run_dir)), plan, world),
    )  # fmt: skip


_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def create_run(
    name: str,
    config: Mapping[str, Any] | Any = None,
    *,
    output_dir: str | Path = "runs",
    log_sinks: Sequence[str] | str = DEFAULT_LOG_SINKS,
    run_suffix: str | None = None,
    strict: bool = False,
    plugin_manager: PluginManager | None = None,
) -> TrainingRun:
    """Set up a run for any training code: a run directory, its sinks, ``run.json``.

    The same as :func:`create_training_run` (statuses, context manager, lock, bad
    input leaving nothing behind) without a :class:`TrainConfig`: ``name`` starts
    the directory's name, ``<name>-<UTC time>[-<suffix>]``, and ``config`` is logged
    once as it is.

    Args:
        name: Letters, digits, ``-``, ``_`` and ``.``.
        config: A mapping or a dataclass (``None``: an empty config).
        output_dir: Where the run directory goes.
        log_sinks: Sink names, a sequence or one comma-separated string.
        run_suffix: Appended to the run directory's name.
        strict: A sink that raises fails the call instead of being dropped.
        plugin_manager: Where to find sinks (a fresh one by default).

    Raises:
        ValueError: a bad name, suffix, output directory or sink name (the message
            lists the available sinks); nothing is left under ``output_dir``.
        SinkCreationError: a sink's factory raised.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or set(name) == {"."}:
        raise ConfigError(
            f"name: {name!r} is not a run name (accepted: letters, digits, '-', '_', '.')"
        )
    if config is not None and not isinstance(config, Mapping) and not is_dataclass(config):
        raise ConfigError(f"config: a {type(config).__name__} is not a mapping or a dataclass")
    if not isinstance(output_dir, (str, Path)) or str(output_dir) == "":
        raise ConfigError(f"output_dir: {output_dir!r} is not a directory path (str or Path)")
    _check_suffix(run_suffix)
    plain = normalize_config({} if config is None else config)
    world = current_world("create_run")
    infos = checked_on_every_rank(
        world, lambda: discover_sinks(plugin_manager).resolve(sink_names(log_sinks))
    )
    return opened_by_rank_zero(
        world,
        lambda: _new_run(Path(output_dir), name, run_suffix, plain,
                         sinks=infos, strict=strict, world=world, logged_config=plain),
        lambda run: str(run.run_dir),
        lambda run_dir: TrainingRun.follower(
            RunContext(config=plain, run_dir=Path(run_dir)), None, world),
    )  # fmt: skip


def _new_run(
    output_dir: Path,
    prefix: str,
    run_suffix: str | None,
    config: TrainConfig | dict[str, Any],
    **how: Any,
) -> TrainingRun:
    """Make ``<prefix>-<UTC time>[-<suffix>]`` under ``output_dir``, lock it and
    :func:`open_run` it (``how``: its keyword arguments); a failure removes what was
    made, ``output_dir`` too if this call made it."""
    made_output_dir = not output_dir.exists()
    context = _new_context(output_dir, prefix, run_suffix, config)
    lock = RunLock(context.run_dir)
    try:
        lock.acquire()  # a directory this call just made: the lock is free
        return open_run(context, lock=lock, **how)
    except BaseException:
        lock.release()
        shutil.rmtree(context.run_dir, ignore_errors=True)
        if made_output_dir:
            with contextlib.suppress(OSError):
                output_dir.rmdir()  # only if still empty
        raise


def lock_run(run_dir: Path) -> RunLock:
    """Take the lock of an existing run directory.

    Raises:
        RunInUseError: a live process has the run open.
    """
    lock = RunLock(run_dir)
    if not lock.acquire():
        raise RunInUseError(
            f"run {run_dir} is in use by a live process (pid {lock.holder()}); "
            "wait for it to end or stop it first"
        )
    return lock


def reopen_training_run(
    run_dir: Path,
    config: TrainConfig,
    resume_step: int,
    lock: RunLock,
    *,
    strict: bool = False,
    plugin_manager: PluginManager | None = None,
    info: Mapping[str, Any] | None = None,
    plan: Plan | None = None,
) -> TrainingRun:
    """Open an existing run again, in place, to continue it from ``resume_step``.

    The caller holds the run's ``lock`` (see :func:`lock_run`); it passes to the run.
    Sinks get ``RunContext.resume_step`` and drop what the earlier attempt logged
    after it; ``run.json`` (``info``, as the caller read it; a new one if ``None``)
    goes back to ``"running"`` and records the resume.

    Raises:
        ValueError: as :func:`create_training_run`, before anything changes on disk.
        SinkCreationError: a sink's factory raised.
    """
    infos = discover_sinks(plugin_manager).resolve(config.log_sinks)
    plan = plan if plan is not None else resolve_plan(config)
    context = RunContext(config=config, run_dir=run_dir, resume_step=resume_step)
    if info is None:
        info = _run_info(context, tuple(config.log_sinks), plan.world.size)
    info = {"run_id": uuid.uuid4().hex, **info}  # runs of earlier versions get an id now
    info.update(status="running", end_time=None)
    remove_stray_temporaries(run_dir)  # what killed processes left of atomic writes
    this = {"step": resume_step, "time": _utc_now(), "command": list(sys.argv), "pid": os.getpid()}
    info["resumes"] = [*info.get("resumes", []), this]
    return open_run(context, sinks=infos, lock=lock, plan=plan, strict=strict, info=info)


def open_run(
    context: RunContext,
    *,
    sinks: Sequence[SinkInfo],
    lock: RunLock,
    plan: Plan | None = None,
    strict: bool = False,
    world: World | None = None,
    info: dict[str, Any] | None = None,
    logged_config: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Open a run in ``context.run_dir``: start every sink, write ``run.json``, log the config.

    Args:
        context: Where the run writes (with ``resume_step`` for a resume).
        sinks: The sinks to start, resolved by :func:`~rl_training.plugins.discover_sinks`.
        lock: The run directory's lock, held by the caller; it passes to the run.
        plan: The config resolved for this machine (built-in trainers); its world wins.
        strict: A sink that raises stops the run instead of being dropped.
        world: The processes of the run, where there is no ``plan``.
        info: ``run.json`` as it stands (a resume); ``None`` starts a new one.
        logged_config: What ``log_config`` gets; ``None``: the run's ``TrainConfig``
            with the world size.

    Raises:
        SinkCreationError: a sink's factory raised (the sinks already started are closed).
    """
    if plan is not None:
        world = plan.world
    started: dict[str, Sink] = {}
    try:
        for sink_info in sinks:
            try:
                started[sink_info.name] = sink_info.factory(context)
            except (Exception, SystemExit) as error:
                raise SinkCreationError(
                    f"log sink {sink_info.name!r} ({sink_info.provider}) failed to start: "
                    f"{type(error).__name__}: {error}"
                ) from None
        logger = CompositeLogger(started, strict=strict)
        run = TrainingRun(context, logger, plan, lock=lock, info=info, world=world)
        if logged_config is None:
            assert isinstance(context.config, TrainConfig)  # the built-in trainers' runs
            logged_config = {**context.config.to_dict(), "world_size": run.world.size}
        logger.log_config(logged_config)
    except BaseException:
        for sink in started.values():
            try:
                sink.close()
            except Exception:  # noqa: BLE001, S110  # already failing; report the first error
                pass
        raise
    return run


def _remove_if_empty(directory: Path) -> None:
    """Remove ``directory`` if nothing was written into it (no sink used it)."""
    with contextlib.suppress(OSError):
        directory.rmdir()


def _write_run_info(path: Path, info: dict[str, Any]) -> None:
    """Write ``run.json`` atomically, or, on a full disk, in place: a run must never be
    left saying ``"running"`` because its last status found no room."""
    try:
        write_json_atomic(path, info)
    except OSError as error:
        if error.errno != errno.ENOSPC or not path.exists():
            raise
        rewrite_in_place(path, json_bytes(info))


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _run_info(
    context: RunContext, sink_names: tuple[str, ...], world_size: int = 1
) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  # no user name in some containers
        user = None
    return {
        "name": context.name,
        "run_id": uuid.uuid4().hex,
        "status": "running",
        "start_time": _utc_now(),
        "end_time": None,
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "user": user,
        **(
            {"algo": config.algo, "env_id": config.env_id, "seed": config.seed}
            if isinstance(config := context.config, TrainConfig)
            else {}
        ),
        "log_sinks": list(sink_names),
        "world_size": world_size,
        "versions": {
            "python": platform.python_version(),
            "torch": _version("torch"),
            "gymnasium": _version("gymnasium"),
            "rl-training": _version("rl-training"),
        },
    }


__all__ = [
    "RunContext",
    "create_run",
    "RunInUseError",
    "SinkCreationError",
    "TrainingRun",
    "create_run_context",
    "create_training_run",
    "lock_run",
    "open_run",
    "reopen_training_run",
]
