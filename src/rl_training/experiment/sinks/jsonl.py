"""The ``json`` sink: ``config.json`` and one strict-JSON line per call in ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_training.hookspecs import hookimpl
from rl_training.runtime.context import AppendOnlyFile, open_run_file, write_json_atomic

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
    with a single ``write(2)`` on an unbuffered append-only descriptor: a reader, or
    a process killed at any instant, only ever sees whole lines. A write that fails
    (a full disk) is cut back to the last whole line before the error is raised. A
    resumed run (``run_context.resume_step`` S) keeps the rows up to S.
    """

    delivery = "inline"
    """Called in the training thread: a row is on disk when ``log_metrics`` returns."""

    def __init__(self, run_context: RunContext) -> None:
        self._metrics_path = run_context.metrics_path
        self._config_path = run_context.config_path
        if run_context.resume_step is not None:
            keep_rows_up_to(self._metrics_path, run_context.resume_step)
        self._file = AppendOnlyFile(self._metrics_path)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Write ``config.json`` (pretty, sorted keys); a later call replaces it."""
        write_json_atomic(self._config_path, _json_safe_tree(config))

    def log_metrics(self, metrics: Mapping[str, Scalar], step: int) -> None:
        """Append one line holding ``step``, ``time`` (Unix seconds) and every metric."""
        row: dict[str, Any] = {"step": step, "time": time.time()}
        for key, value in metrics.items():
            row[key] = json_safe(value)
        self._file.append((_encode(row) + "\n").encode("utf-8"))

    def close(self) -> None:
        """fsync and close ``metrics.jsonl``; a second call does nothing."""
        self._file.close()


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
