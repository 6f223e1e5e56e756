"""The ``csv`` sink: ``progress.csv`` in the run directory, one row per ``log_metrics`` call.

The smallest complete sink package: a class with the three sink methods, and a hook
that offers it under a name.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from typing import Any

import rl_training

FIXED = ["step", "time"]


class CsvSink:
    """Append a row per call; a key first seen mid-run rewrites the file with a wider header.

    Rows keep every column seen so far (empty where a row has no value), so a key
    that appears late (a loss after the first update) is neither dropped nor
    written under the wrong header. The rewrite goes through a temporary file and
    an atomic rename: a reader sees the old file or the new one. A resumed run
    (``run_context.resume_step`` S) keeps the rows up to S and appends after them.
    """

    delivery = "inline"
    """Called in the training thread: a row is in ``progress.csv`` when ``log_metrics`` returns."""

    def __init__(self, run_context: Any) -> None:
        self.path = run_context.run_dir / "progress.csv"
        self.columns: list[str] = list(FIXED)
        resume_step = getattr(run_context, "resume_step", None)
        if resume_step is not None and self.path.exists():
            # A resumed run: keep the rows up to the checkpoint's step, drop the rest.
            with open(self.path, newline="", encoding="utf-8") as f:
                header, *rows = list(csv.reader(f)) or [self.columns]
            self.columns = header
            self._rewrite([row for row in rows if row and int(row[0]) <= resume_step])
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._file)
            return
        self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)
        self._file.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The config is not tabular: other sinks (json) keep it."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Write one row; widen the header first if the row brings new keys."""
        import time

        new = [key for key in metrics if key not in self.columns]
        if new:
            self._widen(new)
        row = {"step": step, "time": time.time(), **metrics}
        self._writer.writerow([_cell(row.get(column)) for column in self.columns])
        self._file.flush()

    def _widen(self, new_columns: list[str]) -> None:
        self._file.close()
        with open(self.path, newline="", encoding="utf-8") as f:
            old_rows = list(csv.reader(f))[1:]
        self.columns += new_columns
        padding = [""] * len(new_columns)
        self._rewrite([row + padding for row in old_rows])
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file)

    def _rewrite(self, rows: list[list[str]]) -> None:
        """Replace the file with the header and ``rows``, atomically."""
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Flush and close the file; a second call does nothing."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value) if isinstance(value, float) else str(value)


@rl_training.hookimpl
def rl_training_log_sinks() -> dict[str, Any]:
    """Offer the ``csv`` sink."""
    return {"csv": CsvSink}
