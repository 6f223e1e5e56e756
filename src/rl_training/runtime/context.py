"""Where a run writes: :class:`RunContext`, and atomic JSON files.

A leaf module: run setup (:mod:`rl_training.experiment.run`) and the sinks both
import it, and it imports neither.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rl_training.config import TrainConfig


@dataclass(frozen=True)
class RunFiles:
    """The files of a run directory: every name is spelled here and nowhere else."""

    run_dir: Path
    """The run directory."""

    TENSORBOARD: ClassVar[str] = "tensorboard"
    METRICS: ClassVar[str] = "metrics.jsonl"
    CONFIG: ClassVar[str] = "config.json"
    RUN_INFO: ClassVar[str] = "run.json"
    MODEL: ClassVar[str] = "model.pt"
    BEST_MODEL: ClassVar[str] = "best_model.pt"
    CHECKPOINT: ClassVar[str] = "checkpoint.pt"
    LOCK: ClassVar[str] = ".lock"

    @property
    def tensorboard_dir(self) -> Path:
        """``tensorboard/``: the ``tensorboard`` sink's event files, made with the run."""
        return self.run_dir / self.TENSORBOARD

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one JSON line per logged row (the ``json`` sink)."""
        return self.run_dir / self.METRICS

    @property
    def config(self) -> Path:
        """``config.json``: the run's config (the ``json`` sink)."""
        return self.run_dir / self.CONFIG

    @property
    def run_info(self) -> Path:
        """``run.json``: name, status, times, command line, versions, summary."""
        return self.run_dir / self.RUN_INFO

    @property
    def model(self) -> Path:
        """``model.pt``: the final model, saved when training finishes."""
        return self.run_dir / self.MODEL

    @property
    def best_model(self) -> Path:
        """``best_model.pt``: the model of the best evaluation so far."""
        return self.run_dir / self.BEST_MODEL

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt``: the latest checkpoint, replaced atomically."""
        return self.run_dir / self.CHECKPOINT

    @property
    def lock(self) -> Path:
        """``.lock``: locked while a process has the run open."""
        return self.run_dir / self.LOCK


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """Where one run writes. Sinks get it from their factory."""

    config: TrainConfig | Mapping[str, Any]
    """The run's configuration: a :class:`~rl_training.TrainConfig` for the built-in
    trainers, the JSON-shaped config given to :func:`~rl_training.create_run` otherwise."""
    run_dir: Path
    """A directory of this run alone, directly under ``config.output_dir``."""
    resume_step: int | None = None
    """``None`` for a fresh run. When the run is resumed in place, the checkpoint's
    step S: a sink keeps what it holds up to S and drops anything logged after S by
    the earlier attempt, so the run keeps one continuous history."""

    @property
    def name(self) -> str:
        """The run's name: its directory's name."""
        return self.run_dir.name

    @property
    def files(self) -> RunFiles:
        """The run directory's files."""
        return RunFiles(self.run_dir)

    @property
    def tensorboard_dir(self) -> Path:
        """``run_dir / "tensorboard"``, created with the run directory."""
        return self.files.tensorboard_dir

    @property
    def metrics_path(self) -> Path:
        """``run_dir / "metrics.jsonl"`` (written by the ``json`` sink)."""
        return self.files.metrics

    @property
    def config_path(self) -> Path:
        """``run_dir / "config.json"`` (written by the ``json`` sink)."""
        return self.files.config

    @property
    def run_info_path(self) -> Path:
        """``run_dir / "run.json"``: name, status, times, command line, versions."""
        return self.files.run_info

    @property
    def model_path(self) -> Path:
        """``run_dir / "model.pt"``: the final model, saved by the trainer."""
        return self.files.model

    @property
    def checkpoint_path(self) -> Path:
        """``run_dir / "checkpoint.pt"``: the latest checkpoint, replaced atomically."""
        return self.files.checkpoint

    @property
    def lock_path(self) -> Path:
        """``run_dir / ".lock"``: locked while a process has the run open."""
        return self.files.lock


def write_json_atomic(path: Path, data: Any) -> None:
    """Write pretty, key-sorted JSON through a temporary file and a rename.

    A reader, or a process killed mid-write, sees the old file or the new one,
    never a truncated one. Text that is not valid Unicode (a non-UTF-8 file name
    decoded with surrogates) is written as ``\\uXXXX`` escapes, so the file is
    always UTF-8. A failed write leaves no temporary file.

    Raises:
        OSError: the file cannot be written (the old one, if any, is intact).
    """
    write_bytes_atomic(path, json_bytes(data))


def json_bytes(data: Any) -> bytes:
    """Pretty, key-sorted, strict JSON as UTF-8 (invalid Unicode escaped), ending in a newline."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    return (text + "\n").encode("utf-8", "backslashreplace")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`replacing`).

    Raises:
        OSError: it cannot be written; the old file is kept, no temporary file is left.
    """
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path to write; on success it is fsynced and renamed onto ``path``.

    A reader, or a process killed at any moment, sees the old file or the new one,
    never a partial one. On any error (a full disk, an interrupt) the temporary
    file is removed and the old file stays.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        # Name the file the caller meant, not the temporary one (or none at all).
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` without a second file: the last resort on a
    full disk, where :func:`replacing` has no room for its temporary file. Not atomic:
    a process killed mid-write can leave ``path`` truncated."""
    with open(path, "r+b") as f:
        f.truncate(0)  # frees the old blocks first: a file of about the same size fits
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class AppendOnlyFile:
    """A file that only grows by whole records: each :meth:`append` is one ``write(2)``
    on an unbuffered ``O_APPEND`` descriptor, done before it returns.

    A reader, or a process killed at any instant, sees whole records only: a write
    that fails (a full disk) is cut back to the end of the last whole record before
    the error is raised.

    Args:
        path: The file (created if missing; appended to if it exists).
        exclusive: Refuse to open a file that exists already.
    """

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(path, flags | (os.O_EXCL if exclusive else 0), 0o644)
        self._size = os.fstat(self._fd).st_size

    def append(self, data: bytes) -> None:
        """Append ``data`` whole.

        Raises:
            OSError: it could not be written (naming the file); the file is as before.
            RuntimeError: the file is closed.
        """
        if self._fd is None:
            raise RuntimeError(f"{self.path} is closed")
        try:
            written = os.write(self._fd, data)  # a regular file takes it in one write...
            while written < len(data):  # ...unless it is full: then the next write fails
                written += os.write(self._fd, data[written:])
        except OSError as error:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise OSError(error.errno, f"{error.strerror} (writing {self.path})") from None
        self._size += len(data)

    def close(self) -> None:
        """fsync and close; a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class RunLock:
    """An exclusive lock on a run directory, held while a process has the run open.

    ``flock`` on ``run_dir / ".lock"``: the kernel releases it when the process
    ends in any way, ``SIGKILL`` included, so a dead run never stays locked.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; ``False`` if another process holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def mark(self) -> None:
        """Write this process's pid into the lock file, for :meth:`holder` (once the
        run is really open: a refused resume leaves the file as it was)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def holder(self) -> str:
        """The pid written by the process holding the lock, or ``"?"``."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        """Let go of the lock (closing the descriptor releases it); a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


__all__ = [
    "AppendOnlyFile",
    "RunContext",
    "RunLock",
    "json_bytes",
    "replacing",
    "rewrite_in_place",
    "write_bytes_atomic",
    "write_json_atomic",
]
