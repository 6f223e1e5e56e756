"""The ``mlflow`` sink: each run an MLflow run, in a local store unless told otherwise.

- Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<run_dir>/mlflow.db`` (with
  artifacts under ``<run_dir>/mlflow-artifacts``), so a run is self-contained.
  Experiment: ``MLFLOW_EXPERIMENT_NAME``, else ``rl-training``.
- Config: MLflow params, flattened to dotted keys (``hyperparams.n_steps``); values
  longer than MLflow's limit are cut, ending in ``...``.
- Metrics: with their step; buffered and sent in batches (at most every
  ``FLUSH_SECONDS`` or ``FLUSH_METRICS`` values, and on close), since each request to
  a store costs milliseconds. MLflow stores +-inf as +-1.797e308.
- Close: the MLflow run ends FINISHED, FAILED or KILLED for the statuses
  ``finished``, ``failed`` and ``interrupted``.
- Resume (``run_context.resume_step`` S): the same MLflow run continues (found by
  its ``rl_training.run_dir`` tag), tagged ``rl_training.resume_step``. MLflow
  has no API to delete metric points: those the earlier attempt logged after S
  stay in the history beside the new ones.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import rl_training

FLUSH_SECONDS = 2.0
"""Longest a logged value waits before being sent."""
FLUSH_METRICS = 500
"""Values that trigger a send (MLflow takes up to 1000 per batch)."""
MAX_PARAM_LENGTH = 6000
"""MLflow's limit on a param value (500 before MLflow 2.9; 6000 since)."""

_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MlflowSink:
    """Log to an MLflow tracking store through ``MlflowClient``."""

    def __init__(self, run_context: Any) -> None:
        from mlflow.tracking import MlflowClient

        run_dir = run_context.run_dir
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
        local = "MLFLOW_TRACKING_URI" not in os.environ
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "rl-training")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = self.client.create_experiment(
                    name,
                    artifact_location=(run_dir / "mlflow-artifacts").as_uri() if local else None,
                )
            except Exception:  # another run created it first
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        resume_step = getattr(run_context, "resume_step", None)
        earlier = self._find_run(experiment_id, str(run_dir)) if resume_step is not None else None
        self._logged_params: dict[str, str] = {}
        if earlier is not None:  # a resumed run continues its MLflow run
            self.run_id: str = earlier
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "rl_training.resume_step", str(resume_step))
            self._logged_params = dict(self.client.get_run(self.run_id).data.params)
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_context.name, tags={"rl_training.run_dir": str(run_dir)}
            )
            self.run_id = run.info.run_id
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._closed = False

    def _find_run(self, experiment_id: str, run_dir: str) -> str | None:
        escaped = run_dir.replace("'", "\\'")
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`rl_training.run_dir` = '{escaped}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Log the flattened config as params.

        MLflow params cannot change: a value that differs from one already logged (a
        resumed run's larger ``total_timesteps``) becomes the tag ``config.<key>``.
        """
        from mlflow.entities import Param, RunTag

        params, tags = [], []
        for key, value in _flatten(config).items():
            text = _param_value(value)
            if key not in self._logged_params:
                params.append(Param(key, text))
            elif self._logged_params[key] != text:
                tags.append(RunTag(f"config.{key}", text))
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
        self._pending.extend(Metric(k, float(v), timestamp, step) for k, v in metrics.items())
        if (
            len(self._pending) >= FLUSH_METRICS
            or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Send every queued value."""
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), 1000):
            self.client.log_batch(self.run_id, metrics=pending[start : start + 1000])
        self._last_flush = time.monotonic()

    def close(self, status: str = "finished") -> None:
        """Send what is queued and end the MLflow run with the matching status."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, _STATUS.get(status, "FAILED"))


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
