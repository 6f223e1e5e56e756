"""The ``mlflow`` sink: each run an MLflow run, in one store per output directory.

- Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<output_dir>/mlflow.db``
  with artifacts under ``<output_dir>/mlflow-artifacts``: every run of an output
  directory in one store, so ``mlflow ui`` compares them. Experiment:
  ``MLFLOW_EXPERIMENT_NAME``, else ``rl-training``. Runs started at once share the
  store safely (SQLite locking; the experiment is created once).
- Config: MLflow params, flattened to dotted keys (``hyperparams.n_steps``); values
  longer than MLflow's limit are cut, ending in ``...``.
- Metrics: with their step; buffered and sent in batches through ``log_batch`` (at
  most every ``FLUSH_SECONDS`` or ``FLUSH_METRICS`` values, and on close), since each
  request to a store costs milliseconds. A key MLflow refuses (a comma, a newline, over 250
  characters...) is renamed when it is logged, with one :class:`MlflowKeyWarning`,
  so no batch is ever refused for it. MLflow stores +-inf as +-1.797e308.
- Images and videos: images through ``log_image(key=, step=)`` (MLflow's UI shows
  them per step), videos as animated GIF artifacts ``media/<key>/<step>-<n>.gif``;
  sent with the batches, retried with them. Histograms and text are not taken
  (``kinds``), rl-training leaves them out with one warning.
- Close: ``model.pt`` and ``best_model.pt`` of the run directory are logged as
  artifacts; the MLflow run ends FINISHED, FAILED or KILLED for the statuses
  ``finished``, ``failed`` and ``interrupted``.
- Delivery: the sink declares no ``delivery``, so rl-training feeds it on a thread of
  its own (a slow or unreachable store never holds training back). A batch (or the
  params) that fails to reach the store stays queued and is sent again with
  exponential backoff (``RETRY_FIRST`` s doubling to ``RETRY_MAX`` s), one warning
  when the store first fails and one when it is back. MLflow's own HTTP retries
  (7 tries over ~4 minutes by default) would stall that, so the sink sets
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` unless
  they are set. At close it retries at once, then every ``RETRY_FIRST`` s, for at most
  ``CLOSE_RETRY_SECONDS`` (the backoff does not carry over into the close); the
  rows it could not send (and any dropped because more than ``MAX_PENDING_VALUES``
  waited) are its :attr:`~MlflowSink.undelivered`, which ``run.json`` records.
- Resume (``run_context.resume_step`` S): the same MLflow run continues (found by
  its ``rl_training.run_dir`` tag), tagged ``rl_training.resume_step``. Every batch
  sent records its last step in the tag ``rl_training.delivered_step``; a resume
  sends the rows of the run's ``metrics.jsonl`` (the ``json`` sink's) after that
  step and up to S, which a killed attempt had not sent (leaving out the points the
  store already has: a kill between a batch's metrics and its tag), so the history
  up to S is whole and each point in it once. MLflow has no API to delete metric
  points: those the earlier attempt logged after S stay in the history beside the
  new ones.
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
import sys
import time
import warnings
from collections import deque
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
RETRY_FIRST = 1.0
"""Seconds before the first retry of a failed send; doubled after each failure..."""
RETRY_MAX = 30.0
"""...up to this."""
CLOSE_RETRY_SECONDS = 5.0
"""How long :meth:`MlflowSink.close` keeps retrying a store that does not answer."""
MAX_PENDING_VALUES = 200_000
"""Values kept while the store is away (about 40 MB); older rows are dropped beyond."""

_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
DELIVERED_TAG = "rl_training.delivered_step"
"""The last step the store has every value of (``-1``: none yet)."""
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")  # MLflow's rule, without the POSIX-only colon


class MlflowKeyWarning(RuntimeWarning):
    """A metric or param key MLflow would refuse was renamed (once per key)."""


class MlflowDeliveryWarning(RuntimeWarning):
    """The tracking store did not take a send (retried), or rows were given up."""


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

    kinds = frozenset({"scalar", "image", "video"})

    def __init__(self, run_context: Any) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the sink retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._run_dir = Path(run_context.run_dir).resolve()  # relative dirs: URIs need absolute
        output_dir = self._run_dir.parent
        configured = os.environ.get("MLFLOW_TRACKING_URI")
        uri = configured or f"sqlite:///{output_dir / 'mlflow.db'}"
        self._uri = uri
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
        self._rows: deque[list[Any]] = deque()  # one list of Metric per row, oldest first
        self._pending_values = 0
        self._config: list[tuple[list[Any], list[Any]]] = []  # (params, tags) not yet sent
        self._media: deque[tuple[str, Any, int]] = deque()  # (key, image or video, step)
        self._media_sent = 0
        self._lost = 0  # rows given up
        self._failures = 0  # sends failed in a row
        self._retry_at = 0.0
        self._last_flush = time.monotonic()
        if earlier is not None and DELIVERED_TAG in stored.tags:  # runs of older versions:
            self._send_rows_after(int(stored.tags[DELIVERED_TAG]), resume_step)  # unknown
        self._closed = False

    @property
    def undelivered(self) -> int:
        """Rows (``log_metrics`` calls) given up or still waiting for the store: read by
        rl-training at close for ``run.json["sinks"]["mlflow"]["undelivered"]``."""
        return self._lost + len(self._rows) + len(self._media)

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
            self._config.append((params[start : start + 100], tags))
            tags = []
        if tags:
            self._config.append(([], tags))
        self._logged_params.update((p.key, p.value) for p in params)
        self._send(force=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue the values with their step; send when enough are queued or time has passed."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        key = self._key
        row = []
        for k, v in metrics.items():
            if getattr(v, "kind", "scalar") == "scalar":
                row.append(Metric(key(k), float(v), timestamp, step))
            else:
                self._media.append((k, v, step))
        if row:
            self._queue_row(row)
        self._send(force=bool(self._media))

    def flush(self) -> None:
        """Send every queued value now (unless the store failed and its retry is not due).

        Raises nothing for a store that does not answer: the values stay queued.
        """
        self._send(force=True)

    def _queue_row(self, row: list[Any]) -> None:
        self._rows.append(row)
        self._pending_values += len(row)
        while self._pending_values > MAX_PENDING_VALUES and len(self._rows) > 1:
            self._pending_values -= len(self._rows.popleft())
            self._lost += 1

    def _send(self, *, force: bool = False) -> bool:
        """Send what is queued if it is due; whether nothing is left queued."""
        now = time.monotonic()
        if not (self._config or self._rows or self._media):
            return True
        if now < self._retry_at:
            return False
        if (
            not force
            and self._failures == 0
            and (self._pending_values < FLUSH_METRICS and now - self._last_flush < FLUSH_SECONDS)
        ):
            return False
        try:
            self._send_queued()
        except Exception as error:  # noqa: BLE001  # any failure of the store: retried
            self._failures += 1
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            if self._failures == 1:
                warnings.warn(
                    f"mlflow sink: the tracking store {self._uri} did not take a send "
                    f"({type(error).__name__}: {_first_line(error)}); values stay queued and "
                    f"are sent again with backoff (up to {RETRY_MAX:g} s)",
                    MlflowDeliveryWarning,
                    stacklevel=2,
                )
            return False
        if self._failures:
            warnings.warn(
                f"mlflow sink: the tracking store {self._uri} is back after "
                f"{self._failures} failed send(s); queued values delivered",
                MlflowDeliveryWarning,
                stacklevel=2,
            )
        self._failures, self._retry_at = 0, 0.0
        return True

    def _send_queued(self) -> None:
        """Send the queued params, then the rows in batches of whole rows (at most 1000
        values, MLflow's limit), each dequeued once the store took it. The batch holding
        the last row records the last step sent."""
        from mlflow.entities import RunTag

        while self._config:
            params, tags = self._config[0]
            self.client.log_batch(self.run_id, params=params, tags=tags)
            self._config.pop(0)
        while self._rows:
            batch: list[Any] = []
            rows = 0
            for row in self._rows:
                if batch and len(batch) + len(row) > 1000:
                    break
                batch.extend(row)
                rows += 1
            last_step = max((m.step for m in batch), default=None)
            for start in range(0, max(len(batch), 1), 1000):  # one row of >1000 values
                chunk = batch[start : start + 1000]
                final = start + 1000 >= len(batch)
                tags = [RunTag(DELIVERED_TAG, str(last_step))] if final and chunk else []
                self.client.log_batch(self.run_id, metrics=chunk, tags=tags)
            for _ in range(rows):
                self._pending_values -= len(self._rows.popleft())
        while self._media:
            key, value, step = self._media[0]
            self._send_media(key, value, step)
            self._media.popleft()
        self._last_flush = time.monotonic()

    def _send_media(self, key: str, value: Any, step: int) -> None:
        """An image through ``log_image``; a video as a GIF artifact."""
        if value.kind == "image":
            self.client.log_image(self.run_id, value.data, key=self._key(key), step=step)
            return
        import tempfile

        from rl_training.experiment.media import encoded

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{step}-{self._media_sent}.gif"
            path.write_bytes(encoded(value))
            self.client.log_artifact(self.run_id, str(path), f"media/{self._key(key)}")
        self._media_sent += 1

    def _send_rows_after(self, delivered: int, resume_step: int) -> None:
        """Send the rows of ``metrics.jsonl`` with ``delivered < step <= resume_step``:
        what a killed attempt logged but never sent (nothing if there is no JSONL).

        A point the store already has (same key, step and value) is not sent again: a
        store takes a batch's metrics and its tags in two transactions, so a kill between
        them leaves points stored beyond the ``delivered`` tag.
        """
        from mlflow.entities import Metric

        path = self._run_dir / "metrics.jsonl"
        if not path.is_file() or delivered >= resume_step:
            return
        rows = []
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # a torn last line
                row = json.loads(line)
                step = row.get("step")
                if not isinstance(step, int) or not delivered < step <= resume_step:
                    continue
                stamp = int(float(row.get("time", time.time())) * 1000)
                rows.append(
                    [
                        Metric(self._key(key), number, stamp, step)
                        for key, value in row.items()
                        if key not in ("step", "time") and (number := _number(value)) is not None
                    ]
                )
        stored = {
            (key, point.step, _stored_value(point.value))
            for key in {metric.key for row in rows for metric in row}
            for point in self.client.get_metric_history(self.run_id, key)
            if delivered < point.step <= resume_step
        }
        for row in rows:
            missing = [m for m in row if (m.key, m.step, _stored_value(m.value)) not in stored]
            if missing:
                self._queue_row(missing)
        self.flush()

    def close(self, status: str = "finished") -> None:
        """Send what is queued, log the run's models, end the MLflow run with the status.

        A store that does not answer is retried for at most ``CLOSE_RETRY_SECONDS``,
        at once and then every ``RETRY_FIRST`` s whatever the backoff had reached (a
        store back just before the close gets everything); then what is left is given
        up (counted in :attr:`undelivered`, one warning) and the close returns normally.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + CLOSE_RETRY_SECONDS
        while True:
            self._retry_at = 0.0  # no backoff at close: the budget is the deadline
            if self._send(force=True):
                break
            if time.monotonic() + RETRY_FIRST > deadline:
                self._lost += len(self._rows) + len(self._media)
                self._rows.clear()
                self._media.clear()
                warnings.warn(
                    f"mlflow sink: the tracking store {self._uri} did not answer for "
                    f"{CLOSE_RETRY_SECONDS:g} s at close; {self._lost} row(s) were not "
                    "delivered (metrics.jsonl has them, with the json sink)",
                    MlflowDeliveryWarning,
                    stacklevel=2,
                )
                return
            time.sleep(RETRY_FIRST)
        try:
            for model in ("model.pt", "best_model.pt"):
                if (self._run_dir / model).is_file():
                    self.client.log_artifact(self.run_id, str(self._run_dir / model))
        finally:
            self.client.set_terminated(self.run_id, _STATUS.get(status, "FAILED"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


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


def _stored_value(value: float) -> float | str:
    """``value`` as a store gives it back, comparable: +-inf is stored as +-1.797e308,
    and NaN (unequal to itself) is compared as a string."""
    if math.isnan(value):
        return "nan"
    return math.copysign(sys.float_info.max, value) if math.isinf(value) else value


def _number(value: Any) -> float | None:
    """A metric value of a ``metrics.jsonl`` row (its spelling of non-finite numbers too)."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value)
