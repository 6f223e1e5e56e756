"""Run setup: a fresh run directory, the sinks for it, and ``run.json``."""

from __future__ import annotations

import getpass
import importlib.metadata as metadata
import os
import platform
import re
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError
from rl_training.experiment.logging import STATUSES, CompositeLogger, Sink, closing_status
from rl_training.plugins import PluginManager, discover_sinks
from rl_training.runtime.context import RunContext, write_json_atomic
from rl_training.runtime.plan import Plan, resolve_plan

_SUFFIX_RE = re.compile(r"[A-Za-z0-9_.+=-]+")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.+=-]+")


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
    if run_suffix is not None and not _SUFFIX_RE.fullmatch(run_suffix):
        raise ConfigError(
            f"run_suffix: {run_suffix!r} is not a safe directory-name part "
            "(accepted: letters, digits and _ . + = -)"
        )
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    env = _UNSAFE_RE.sub("_", config.env_id)
    base = f"{config.algo}-{env}-s{config.seed}-{stamp}"
    if run_suffix:
        base = f"{base}-{run_suffix}"
    attempt = 1
    while True:
        run_dir = output_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            run_dir.mkdir()  # exclusive: FileExistsError if anyone made it first
            break
        except FileExistsError:
            attempt += 1
    context = RunContext(config=config, run_dir=run_dir)
    context.tensorboard_dir.mkdir()
    return context


class TrainingRun:
    """An open run: its :class:`RunContext`, its :class:`CompositeLogger`, its ``run.json``.

    Use it as a context manager; leaving by an exception closes it ``"failed"``, by
    ``KeyboardInterrupt`` ``"interrupted"``.
    """

    def __init__(
        self, run_context: RunContext, logger: CompositeLogger, plan: Plan | None = None
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
        self._info: dict[str, Any] = _run_info(run_context, logger.sink_names)
        write_json_atomic(run_context.run_info_path, self._info)

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.run_context.run_dir

    def close(self, status: str = "finished") -> None:
        """Flush and close every sink and record ``status`` in ``run.json``.

        A second call does nothing.

        Raises:
            ValueError: ``status`` is not ``"finished"``, ``"failed"`` or ``"interrupted"``.
        """
        if status not in STATUSES:
            raise ConfigError(f"status: {status!r} is not one of {', '.join(map(repr, STATUSES))}")
        if self.status != "running":
            return
        self.status = status
        try:
            self.logger.close(status)
        finally:
            self._info.update(status=status, end_time=_utc_now())
            write_json_atomic(self.run_context.run_info_path, self._info)

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(closing_status(exc_type))


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
    """
    infos = discover_sinks(plugin_manager).resolve(config.log_sinks)
    plan = resolve_plan(config)
    output_dir = Path(config.output_dir)
    made_output_dir = not output_dir.exists()
    context = create_run_context(config, run_suffix)
    sinks: dict[str, Sink] = {}
    try:
        for info in infos:
            try:
                sinks[info.name] = info.factory(context)
            except Exception as error:
                raise SinkCreationError(
                    f"log sink {info.name!r} ({info.provider}) failed to start: "
                    f"{type(error).__name__}: {error}"
                ) from error
        logger = CompositeLogger(sinks, strict=strict)
        run = TrainingRun(context, logger, plan)
        logger.log_config(config.to_dict())
    except BaseException:
        for sink in sinks.values():
            try:
                sink.close()
            except Exception:  # noqa: BLE001, S110  # already failing; report the first error
                pass
        shutil.rmtree(context.run_dir, ignore_errors=True)
        if made_output_dir:
            try:
                output_dir.rmdir()  # only if still empty
            except OSError:
                pass
        raise
    return run


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _run_info(context: RunContext, sink_names: tuple[str, ...]) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  # no user name in some containers
        user = None
    return {
        "name": context.name,
        "status": "running",
        "start_time": _utc_now(),
        "end_time": None,
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "user": user,
        "algo": context.config.algo,
        "env_id": context.config.env_id,
        "seed": context.config.seed,
        "log_sinks": list(sink_names),
        "versions": {
            "python": platform.python_version(),
            "torch": _version("torch"),
            "gymnasium": _version("gymnasium"),
            "rl-training": _version("rl-training"),
        },
    }


__all__ = [
    "RunContext",
    "SinkCreationError",
    "TrainingRun",
    "create_run_context",
    "create_training_run",
]
