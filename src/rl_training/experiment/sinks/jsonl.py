"""The ``json`` sink: ``config.json``, one strict-JSON line per call in ``metrics.jsonl``,
and media files under ``media/`` indexed by ``media.jsonl``."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_training.experiment.media import (
    Histogram,
    Image,
    Media,
    Text,
    Video,
    encoded,
    histogram_counts,
)
from rl_training.hookspecs import hookimpl
from rl_training.runtime.context import (
    LineFile,
    LinkInRunError,
    RunFiles,
    open_run_file,
    write_json_atomic,
)

if TYPE_CHECKING:
    from rl_training.experiment.logging import Scalar, SinkFactory
    from rl_training.runtime.context import RunContext

_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_encode = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode


def json_safe(value: Scalar) -> Scalar | str:
    """``value``, or for a non-finite float the string RFC 8259 JSON can carry."""
    if type(value) is float and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NON_FINITE[value]
    return value


class JsonlSink:
    """Write ``config.json`` on ``log_config`` and one flushed line of ``metrics.jsonl`` per call.

    Each line is ``{"step": ..., "time": ..., <metrics>...}`` in strict JSON, written
    with a single ``write(2)`` on an unbuffered append-only descriptor, kept inside one
    page of the file (:class:`~rl_training.runtime.context.LineFile`): a reader, or a
    process killed at any instant, only ever sees whole lines. A write that fails
    (a full disk) is cut back to the last whole line before the error is raised. A
    resumed run (``run_context.resume_step`` S) keeps the rows up to S.
    """

    delivery = "inline"
    """Called in the training thread: a row is on disk when ``log_metrics`` returns."""
    kinds = frozenset({"scalar", "image", "video", "histogram", "text"})
    """Scalars go to ``metrics.jsonl``; the other kinds to ``media/`` and ``media.jsonl``."""

    def __init__(self, run_context: RunContext) -> None:
        self._metrics_path = run_context.metrics_path
        self._config_path = run_context.config_path
        self._run_dir = run_context.run_dir
        files = RunFiles(run_context.run_dir)
        self._media_dir, self._media_index = files.media_dir, files.media_index
        if run_context.resume_step is not None:
            keep_rows_up_to(self._metrics_path, run_context.resume_step)
            self._media_count = _keep_media_up_to(files, run_context.resume_step)
        else:
            self._media_count = 0
        self._file = LineFile(self._metrics_path)
        self._media: LineFile | None = None  # media.jsonl, opened at the first value

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Write ``config.json`` (pretty, sorted keys); a later call replaces it."""
        write_json_atomic(self._config_path, _json_safe_tree(config))

    def log_metrics(self, metrics: Mapping[str, Scalar | Media], step: int) -> None:
        """Append one line holding ``step``, ``time`` (Unix seconds) and every scalar to
        ``metrics.jsonl``; each other value goes to :meth:`_write_media`."""
        now = time.time()
        row: dict[str, Any] = {"step": step, "time": now}
        row.update(metrics)
        try:  # every value a finite number, as rows mostly are: encoded as it is
            line = _encode(row)
        except (ValueError, TypeError):  # a non-finite float (strict JSON), or media
            pass
        else:
            self._file.append_line(line.encode("utf-8"))
            return
        row = {"step": step, "time": now}
        media: list[tuple[str, Media]] = []
        for key, value in metrics.items():
            if isinstance(value, Media):
                media.append((key, value))
            else:
                row[key] = json_safe(value)
        if len(row) > 2 or not media:
            self._file.append_line(_encode(row).encode("utf-8"))
        for key, value in media:
            self._write_media(key, value, step, now)

    def _write_media(self, key: str, value: Media, step: int, now: float) -> None:
        """An image (PNG) or video (GIF) file under ``media/<key>/``, then its line of
        ``media.jsonl``; a histogram's bins and counts, or a text, in its line alone."""
        line: dict[str, Any] = {"step": step, "time": now, "key": key, "kind": value.kind}
        if isinstance(value, (Image, Video)):
            data = encoded(value)
            if isinstance(value, Image):
                suffix = "png"
                line["height"], line["width"] = value.data.shape[:2]
            else:
                suffix = "gif"
                line["frames"], line["height"], line["width"] = value.shape[:3]
                line["fps"] = value.fps
            if value.caption is not None:
                line["caption"] = value.caption
            path = self._media_path(key, f"{step}-{self._media_count}.{suffix}")
            fd = open_run_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            line["path"] = path.relative_to(self._run_dir).as_posix()
        elif isinstance(value, Histogram):
            edges, counts = histogram_counts(value)
            line["bins"], line["counts"] = edges.tolist(), counts.tolist()
            line["nonfinite"] = value.nonfinite
        elif isinstance(value, Text):
            line["text"] = value.text
        if self._media is None:
            self._media = LineFile(self._media_index)
        self._media.append_line(_encode(line).encode("utf-8"))
        self._media_count += 1

    def _media_path(self, key: str, name: str) -> Path:
        """``media/<key, each segment sanitised>/name``: no key leads outside ``media/``,
        and no directory on the way is a symbolic link."""
        folder = self._media_dir.joinpath(*media_segments(key))
        folder.mkdir(parents=True, exist_ok=True)
        place = self._run_dir
        for part in folder.relative_to(self._run_dir).parts:
            place = place / part
            if place.is_symlink():
                raise LinkInRunError(place)
        return folder / name

    def close(self) -> None:
        """fsync and close ``metrics.jsonl`` (and ``media.jsonl``); a second call does nothing."""
        self._file.close()
        if self._media is not None:
            self._media.close()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def media_segments(key: str) -> list[str]:
    """The folders of ``key`` under ``media/``: its ``/``-separated parts, every
    character other than letters, digits, ``. _ -`` as ``_``, empty, ``.`` and ``..``
    parts as ``_``, each at most 100 characters."""
    parts = [_UNSAFE.sub("_", part)[:100] for part in key.split("/")]
    return [part if part.strip(".") else "_" for part in parts]


def _keep_media_up_to(files: RunFiles, step: int) -> int:
    """Drop the lines of ``media.jsonl`` after ``step``, and their files; how many
    lines are kept (the next file's number)."""
    path = files.media_index
    try:
        with os.fdopen(open_run_file(path, os.O_RDONLY), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return 0
    lines = text.split(b"\n")[:-1]  # a torn last line is dropped
    kept = 0
    for line in lines:
        if json.loads(line)["step"] > step:
            break
        kept += 1
    media_root = files.media_dir.resolve()
    for line in lines[kept:]:
        relative = json.loads(line).get("path")
        if relative:
            target = files.run_dir / relative
            if media_root in target.resolve().parents and not target.is_symlink():
                target.unlink(missing_ok=True)
    keep_rows_up_to(path, step)
    return kept


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows of ``metrics.jsonl`` after ``step`` (and a partial last line).

    Rows are in step order, so the file is cut at the first row past ``step``: one
    ``truncate``, which a reader sees whole or not at all.
    """
    try:
        f = os.fdopen(open_run_file(path, os.O_RDWR), "rb+")
    except FileNotFoundError:
        return
    with f:
        offset = 0
        for line in f:
            if not line.endswith(b"\n") or json.loads(line)["step"] > step:
                break
            offset += len(line)
        f.truncate(offset)


def _json_safe_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _json_safe_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe_tree(v) for v in value]
    return json_safe(value) if isinstance(value, float) else value


@hookimpl
def rl_training_log_sinks() -> dict[str, SinkFactory]:
    """Offer the ``json`` sink."""
    return {"json": JsonlSink}
