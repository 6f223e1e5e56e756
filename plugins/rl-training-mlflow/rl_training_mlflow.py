"""The ``mlflow`` sink: each run an MLflow run, in one store per output directory.

- Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<output_dir>/mlflow.db``
  with artifacts under ``<output_dir>/mlflow-artifacts``: every run of an output
  directory in one store, so ``mlflow ui`` compares them. Experiment:
  ``MLFLOW_EXPERIMENT_NAME``, else ``rl-training``. Runs started at once share the
  store safely (SQLite locking; the experiment is created once).
- Config: MLflow params, flattened to dotted keys (``hyperparams.n_steps``); values
  longer than MLflow's limit are cut, ending in ``...``.
- Metrics: with their step; buffered and sent in batches (at most every
  ``FLUSH_SECONDS`` or ``FLUSH_METRICS`` values, and on close), since each request to
  a store costs milliseconds. A key MLflow refuses (a comma, a newline, over 250
  characters...) is renamed when it is logged, with one :class:`MlflowKeyWarning`,
  so no batch is ever refused for it. MLflow stores +-inf as +-1.797e308.
- Close: ``model.pt`` and ``best_model.pt`` of the run directory are logged as
  artifacts; the MLflow run ends FINISHED, FAILED or KILLED for the statuses
  ``finished``, ``failed`` and ``interrupted``.
- Delivery: the sink declares no ``delivery``, so rl-training feeds it on a thread of
  its own (a slow or unreachable store never holds training back).
- Resume (``run_context.resume_step`` S): the same MLflow run continues (found by
  its ``rl_training.run_dir`` tag), tagged ``rl_training.resume_step``. Every batch
  sent records its last step in the tag ``rl_training.delivered_step``; a resume
  sends the rows of the run's ``metrics.jsonl`` (the ``json`` sink's) after that
  step and up to S, which a killed attempt had not sent, so the history up to S
  is whole. MLflow has no API to delete metric points: those the earlier attempt
  logged after S stay in the history beside the new ones.
- Telemetry: MLflow's usage telemetry (network calls, files under ``~/.config``) is
  off unless ``MLFLOW_DISABLE_TELEMETRY`` is set to something else before the sink
  starts, as a sink writes nowhere but its store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import rl_training

FLUSH_SECONDS = 2.0
"""Longest a logged value waits before being sent."""
FLUSH_METRICS = 500
"""Values that trigger a send (MLflow takes up to 1000 per batch)."""
MAX_PARAM_LENGTH = 6000
"""MLflow's limit on a param value (500 before MLflow 2.9; 6000 since)."""
MAX_KEY_LENGTH = 250
"""MLflow's limit on a metric or param key."""

_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
DELIVERED_TAG = "rl_training.delivered_step"
"""The last step the store has every value of (``-1``: none yet)."""
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")  # MLflow's rule, without the POSIX-only colon


class MlflowKeyWarning(RuntimeWarning):
    """A metric or param key MLflow would refuse was renamed (once per key)."""


def mlflow_key(key: str) -> str:
    """``key`` as MLflow accepts it: other characters become ``_``, empty, ``.`` and
    ``..`` path segments ``_``, at most 250 characters (a cut key ends in a hash)."""
    parts = _BAD_KEY_CHARS.sub("_", key).split("/")
    segments = [part if part not in ("", ".", "..") else "_" for part in parts]
    name = "/".join(segments)
    if len(name) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[: MAX_KEY_LENGTH - 9]}_{digest}"
    assert posixpath.normpath(name) == name
    return name


class MlflowSink:
    """Log to an MLflow tracking store through ``MlflowClient``."""

    def __init__(self, run_context: Any) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._run_dir = Path(run_context.run_dir).resolve()  # relative dirs: URIs need absolute
        output_dir = self._run_dir.parent
        configured = os.environ.get("MLFLOW_TRACKING_URI")
        uri = configured or f"sqlite:///{output_dir / 'mlflow.db'}"
        # MLflow creates (migrates) a new SQLite store on first use; two runs doing it at
        # once corrupt the migration, so the first use is serialised with a lock beside it.
        with _store_lock(None if configured else output_dir / ".mlflow.lock"), _quiet():
            self.client = MlflowClient(tracking_uri=uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "rl-training")
            experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = None if configured else (output_dir / "mlflow-artifacts").as_uri()
            try:
                experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
            except MlflowException:  # another run created it first...
                found = self.client.get_experiment_by_name(name)
                if found is None:  # ...or not: a real error
                    raise
                experiment_id = found.experiment_id
        resume_step = getattr(run_context, "resume_step", None)
        earlier = self._find_run(experiment_id) if resume_step is not None else None
        self._logged_params: dict[str, str] = {}
        if earlier is not None:  # a resumed run continues its MLflow run
            self.run_id: str = earlier
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "rl_training.resume_step", str(resume_step))
            stored = self.client.get_run(self.run_id).data
            self._logged_params = dict(stored.params)
        else:
            run = self.client.create_run(
                experiment_id,
                run_name=run_context.name,
                tags={"rl_training.run_dir": str(self._run_dir), DELIVERED_TAG: "-1"},
            )
            self.run_id = run.info.run_id
        self._keys: dict[str, str] = {}
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        if earlier is not None and DELIVERED_TAG in stored.tags:  # runs of older versions:
            self._send_rows_after(int(stored.tags[DELIVERED_TAG]), resume_step)  # unknown
        self._closed = False

    def _find_run(self, experiment_id: str) -> str | None:
        escaped = str(self._run_dir).replace("'", "\\'")
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`rl_training.run_dir` = '{escaped}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def _key(self, key: str) -> str:
        """The MLflow key for ``key`` (renamed, with one warning, if MLflow would refuse it)."""
        name = self._keys.get(key)
        if name is None:
            name = self._keys[key] = mlflow_key(key)
            if name != key:
                warnings.warn(
                    f"mlflow sink: key {key!r} is not a valid MLflow key; logged as {name!r}",
                    MlflowKeyWarning,
                    stacklevel=3,
                )
        return name

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Log the flattened config as params.

        MLflow params cannot change: a value that differs from one already logged (a
        resumed run's larger ``total_timesteps``) becomes the tag ``config.<key>``.
        """
        from mlflow.entities import Param, RunTag

        params, tags = [], []
        for key, value in _flatten(config).items():
            name, text = self._key(key), _param_value(value)
            if name not in self._logged_params:
                params.append(Param(name, text))
            elif self._logged_params[name] != text:
                tags.append(RunTag(mlflow_key(f"config.{name}"), text))
        for start in range(0, len(params), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100], tags=tags)
            tags = []
        if tags:
            self.client.log_batch(self.run_id, tags=tags)
        self._logged_params.update((p.key, p.value) for p in params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue the values with their step; send when enough are queued or time has passed."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        key = self._key
        self._pending.extend(Metric(key(k), float(v), timestamp, step) for k, v in metrics.items())
        if (
            len(self._pending) >= FLUSH_METRICS
            or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Send every queued value; the last batch also records the last step sent."""
        from mlflow.entities import RunTag

        pending, self._pending = self._pending, []
        for start in range(0, len(pending), 1000):
            batch = pending[start : start + 1000]
            last = start + 1000 >= len(pending)
            tags = [RunTag(DELIVERED_TAG, str(max(m.step for m in pending)))] if last else []
            self.client.log_batch(self.run_id, metrics=batch, tags=tags)
        self._last_flush = time.monotonic()

    def _send_rows_after(self, delivered: int, resume_step: int) -> None:
        """Send the rows of ``metrics.jsonl`` with ``delivered < step <= resume_step``:
        what a killed attempt logged but never sent (nothing if there is no JSONL)."""
        from mlflow.entities import Metric

        path = self._run_dir / "metrics.jsonl"
        if not path.is_file() or delivered >= resume_step:
            return
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # a torn last line
                row = json.loads(line)
                step = row.get("step")
                if not isinstance(step, int) or not delivered < step <= resume_step:
                    continue
                stamp = int(float(row.get("time", time.time())) * 1000)
                self._pending.extend(
                    Metric(self._key(key), _number(value), stamp, step)
                    for key, value in row.items()
                    if key not in ("step", "time") and _number(value) is not None
                )
        self.flush()

    def close(self, status: str = "finished") -> None:
        """Send what is queued, log the run's models, end the MLflow run with the status."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            for model in ("model.pt", "best_model.pt"):
                if (self._run_dir / model).is_file():
                    self.client.log_artifact(self.run_id, str(self._run_dir / model))
        finally:
            self.client.set_terminated(self.run_id, _STATUS.get(status, "FAILED"))


@contextlib.contextmanager
def _store_lock(path: Path | None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block (nothing when ``None``)."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hush a new store's set-up: MLflow's "Creating initial MLflow database tables..."
    and alembic's migration warnings."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="alembic")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


@rl_training.hookimpl
def rl_training_log_sinks() -> dict[str, Any]:
    """Offer the ``mlflow`` sink."""
    return {"mlflow": MlflowSink}


def _number(value: Any) -> float | None:
    """A metric value of a ``metrics.jsonl`` row (its spelling of non-finite numbers too)."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value)
