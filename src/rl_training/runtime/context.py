"""Where a run writes: :class:`RunContext`, and atomic JSON files.

A leaf module: run setup (:mod:`rl_training.experiment.run`) and the sinks both
import it, and it imports neither.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from rl_training.config import TrainConfig
from rl_training.errors import ConfigError


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
    MEDIA_DIR: ClassVar[str] = "media"
    MEDIA_INDEX: ClassVar[str] = "media.jsonl"

    @property
    def media_dir(self) -> Path:
        """Images and videos the ``json`` sink wrote (PNG, GIF)."""
        return self.run_dir / self.MEDIA_DIR

    @property
    def media_index(self) -> Path:
        """One strict-JSON line per non-scalar value the ``json`` sink wrote."""
        return self.run_dir / self.MEDIA_INDEX

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


class LinkInRunError(ConfigError):
    """A file of a run directory is a symbolic link, which rl-training never follows."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} is a symbolic link; rl-training does not follow links in a run "
            "directory (put the file itself there, or remove the link)"
        )


def open_run_file(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` for a file of a run directory: never through a symbolic link.

    Raises:
        LinkInRunError: ``path`` is a symbolic link.
        OSError: as ``os.open``.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LinkInRunError(path) from None
        raise


def read_run_file(path: Path) -> str:
    """The UTF-8 text of a file of a run directory, read without following a link.

    Raises:
        LinkInRunError: ``path`` is a symbolic link.
        FileNotFoundError: there is no such file.
    """
    with os.fdopen(open_run_file(path, os.O_RDONLY), "rb") as file:
        return file.read().decode("utf-8", "replace")


def check_no_links(files: RunFiles) -> None:
    """Refuse a run directory in which a run file, or ``tensorboard/``, is a symbolic link.

    Raises:
        LinkInRunError: naming the first one.
    """
    for path in (files.run_info, files.config, files.metrics, files.checkpoint, files.model,
                 files.best_model, files.tensorboard_dir):  # fmt: skip
        if path.is_symlink():
            raise LinkInRunError(path)


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
    """Pretty, key-sorted, strict JSON as UTF-8 (invalid Unicode escaped), ending in a newline.

    Non-finite floats, which strict JSON has no spelling for, are the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (as in ``metrics.jsonl``).
    """
    text = json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    return (text + "\n").encode("utf-8", "backslashreplace")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`replacing`).

    Raises:
        OSError: it cannot be written; the old file is kept, no temporary file is left.
    """
    with writing_atomic(path) as f:
        f.write(data)


@contextmanager
def writing_atomic(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` when the block completes
    (:func:`replacing`: fsynced and renamed; on an error the old file stays)."""
    with replacing(path) as tmp:
        with os.fdopen(open_run_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            yield f


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path to write; on success it is fsynced and renamed onto ``path``.

    A reader, or a process killed at any moment, sees the old file or the new one,
    never a partial one. On any error (a full disk, an interrupt) the temporary
    file is removed and the old file stays.
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        fd = open_run_file(tmp, os.O_RDONLY)
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


def temporary_path(path: Path) -> Path:
    """Where :func:`replacing` writes ``path`` before renaming it: ``.<name>.<pid>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stray_temporaries(run_dir: Path) -> None:
    """Remove what killed processes left of :func:`replacing` in ``run_dir``."""
    for path in run_dir.glob(".*.tmp"):
        if re.fullmatch(r"\..+\.\d+\.tmp", path.name) and not path.is_dir():
            path.unlink(missing_ok=True)


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` without a second file: the last resort on a
    full disk, where :func:`replacing` has no room for its temporary file. Not atomic:
    a process killed mid-write can leave ``path`` truncated."""
    with os.fdopen(open_run_file(path, os.O_RDWR), "r+b") as f:
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
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_EXCL if exclusive else 0)
        self._fd: int | None = open_run_file(path, flags)
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


class LineFile(AppendOnlyFile):
    """An :class:`AppendOnlyFile` of text lines that a ``SIGKILL`` cannot cut.

    Linux copies a buffered write into the page cache a page (folio) at a time and
    gives up between two pages when the process is being killed, so a line written
    across a page boundary can be left half written by a ``SIGKILL`` landing during
    its ``write(2)``, and a reader can see its first page before the second. A line
    inside one page is copied in one piece. So when the room left in the page after
    a line is smaller than the longest of the last lines (and a margin), it is padded with
    spaces (insignificant around a JSON value) to the page's end: the next line
    starts a fresh page. Lines longer than a page cannot be kept in one; a resumed
    run drops such a cut last line.
    """

    PAGE: ClassVar[int] = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    """The granularity of the kernel's copy."""
    RECENT: ClassVar[int] = 16
    """How many of the last lines' lengths predict the next one's."""

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        super().__init__(path, exclusive=exclusive)
        self._recent: deque[int] = deque(maxlen=self.RECENT)

    def append_line(self, line: bytes) -> None:
        """Append ``line`` (no newline in it) and its newline, whole.

        Raises:
            OSError: it could not be written (naming the file); the file is as before.
            RuntimeError: the file is closed.
        """
        length = len(line) + 1
        self._recent.append(length)
        start = self._size % self.PAGE
        room = self.PAGE - start - length
        expected = max(self._recent) * 5 // 4 + 64  # numbers' lengths vary between rows
        if 0 < room < expected:  # the next line would likely straddle the page's end
            line += b" " * room
        self.append(line + b"\n")


class RunLock:
    """An exclusive lock on a run directory, held while a process has the run open.

    ``flock`` on the run directory itself: no lock file that could be deleted under a
    live run, nothing written to take it, and the kernel releases it when the
    process ends in any way, ``SIGKILL`` included, so a dead run never stays locked.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; ``False`` if another process holds it.

        Raises:
            OSError: ``run_dir`` is not a directory.
        """
        import fcntl

        fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
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

    def holder(self) -> str:
        """The pid of the process that has the run open (from ``run.json``), or ``"?"``."""
        try:
            info = json.loads(RunFiles(self.run_dir).run_info.read_text(encoding="utf-8"))
            resumes = info.get("resumes") or [info]
            return str(resumes[-1]["pid"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "?"

    def release(self) -> None:
        """Let go of the lock (closing the descriptor releases it); a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


__all__ = [
    "AppendOnlyFile",
    "LineFile",
    "RunContext",
    "RunLock",
    "json_bytes",
    "replacing",
    "rewrite_in_place",
    "write_bytes_atomic",
    "write_json_atomic",
]
