"""The ``wandb`` sink: each run a Weights & Biases run, written offline into the run
directory unless W&B is set up to go online.

- Mode: ``WANDB_MODE`` when it is set (``online``, ``offline``, ``disabled``...), as
  W&B reads it; otherwise online when W&B credentials are present (``wandb login``
  wrote them to ``~/.netrc``, or ``WANDB_API_KEY`` / ``WANDB_IDENTITY_TOKEN_FILE``
  is set) and offline when they are not, so a run never stops to ask for a key and
  never needs the network. An offline run is uploaded later with ``wandb sync``.
- Files: W&B's own, under ``<run_dir>/wandb/`` (``offline-run-*`` or ``run-*``
  directories); the W&B run's id and project in ``<run_dir>/wandb-run.json``.
- Project: ``WANDB_PROJECT``, else ``rl-training``; entity ``WANDB_ENTITY`` (read by
  W&B); name: the run directory's name.
- x axis: environment steps. Each row is logged with its step as the metric
  ``env_step``, and ``define_metric("*", step_metric="env_step")`` makes it every
  chart's x axis. W&B's own ``_step`` only counts calls, so a resumed run's steps
  after S (lower than the steps the earlier attempt reached) are accepted.
- Config: the W&B run's config (values a resume changes are updated in place).
- Values: each kind of value goes through one converter in :data:`CONVERTERS`;
  the sink takes exactly the kinds listed there (``kinds``): scalars as numbers,
  images as ``wandb.Image``, videos as ``wandb.Video`` (animated GIF, as TensorBoard
  shows them), histograms as ``wandb.Histogram`` of rl-training's bins, text as
  a string.
- End: ``finish(exit_code=...)``: 0 for ``finished`` (W&B shows Finished), 1 for
  ``failed`` and 130 for ``interrupted`` (W&B shows Failed); the status itself is
  the summary value ``rl_training/status``.
- Resume (``run_context.resume_step`` S): the same W&B run id continues
  (``resume="allow"``), with S as the summary value ``rl_training/resume_step``.
  Offline, each attempt is its own ``offline-run-*`` directory with that id;
  ``wandb sync`` uploads them, in order of start time, into one W&B run. W&B cannot
  delete logged points: what the earlier attempt logged after S stays in the
  history beside the resumed values (``metrics.jsonl`` has the one history).
- Delivery: the sink declares no ``delivery``, so rl-training feeds it on a thread of
  its own; W&B's service process does the writing and uploading.
"""

from __future__ import annotations

import io
import json
import netrc
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import rl_training
from rl_training.experiment.media import encoded, histogram_counts

STEP_METRIC = "env_step"
"""The metric every row carries its environment step in: the charts' x axis."""
ID_FILE = "wandb-run.json"
"""Where the W&B run id is kept in the run directory (for resumes)."""
DEFAULT_PROJECT = "rl-training"
EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130}
"""``finish(exit_code=...)`` for each way a run ends."""


def _wandb() -> Any:
    import wandb

    return wandb


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "scalar": lambda v: v,
    "image": lambda v: _wandb().Image(v.data, caption=v.caption),
    "video": lambda v: _wandb().Video(
        io.BytesIO(encoded(v)), caption=v.caption, format="gif"
    ),  # fmt: skip
    "histogram": lambda v: _wandb().Histogram(np_histogram=histogram_counts(v)[::-1]),
    "text": lambda v: v.text,
}
"""Kind of value -> what W&B logs for it (values as rl-training normalises them:
``rl_training.experiment.media``): adding a kind is one line here."""


def wandb_mode() -> str | None:
    """The ``mode`` to give ``wandb.init``: ``None`` (W&B decides: ``WANDB_MODE``, or
    online with credentials) when ``WANDB_MODE`` is set or credentials are present,
    else ``"offline"``. Reads no network."""
    if os.environ.get("WANDB_MODE"):
        return None
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    for path in _netrc_paths():
        try:
            if host and netrc.netrc(str(path)).authenticators(host):
                return None
        except (OSError, netrc.NetrcParseError):
            continue
    return "offline"


def _netrc_paths() -> list[Path]:
    if os.environ.get("NETRC"):
        return [Path(os.environ["NETRC"]).expanduser()]
    return [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]


class WandbSink:
    """Log to a Weights & Biases run (see the module docstring)."""

    kinds = frozenset(CONVERTERS)

    def __init__(self, run_context: Any) -> None:
        import wandb

        self._run_dir = Path(run_context.run_dir).resolve()
        resume_step = getattr(run_context, "resume_step", None)
        earlier = self._earlier_run() if resume_step is not None else None
        project = (earlier or {}).get("project") or os.environ.get("WANDB_PROJECT")
        settings = wandb.Settings(console="off", quiet=True, x_save_requirements=False)
        self.run = wandb.init(
            project=project or DEFAULT_PROJECT,
            name=run_context.name,
            id=earlier["id"] if earlier else None,
            resume="allow" if earlier else None,
            dir=str(self._run_dir),
            mode=wandb_mode(),  # type: ignore[arg-type]
            reinit="create_new",  # several runs in one process each get their own
            settings=settings,
        )
        if earlier is None:
            _write_json(self._run_dir / ID_FILE, {"id": self.run.id, "project": self.run.project})
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        if resume_step is not None:
            self.run.summary["rl_training/resume_step"] = resume_step
        self._closed = False

    def _earlier_run(self) -> dict[str, Any] | None:
        path = self._run_dir / ID_FILE
        if not path.is_file():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        return stored if isinstance(stored, dict) and isinstance(stored.get("id"), str) else None

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Merge ``config`` into the W&B run's config."""
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """One W&B history row: every value converted, and ``env_step`` = ``step``."""
        row = {key: CONVERTERS[_kind(value)](value) for key, value in metrics.items()}
        row[STEP_METRIC] = step
        self.run.log(row)

    def close(self, status: str = "finished") -> None:
        """Finish the W&B run with the status's exit code."""
        if self._closed:
            return
        self._closed = True
        self.run.summary["rl_training/status"] = status
        self.run.finish(exit_code=EXIT_CODES.get(status, 1))


def _kind(value: Any) -> str:
    """The kind of a value rl-training hands over (scalars are int/float/bool)."""
    return getattr(value, "kind", "scalar")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write through a temporary file and a rename (never through a symlink)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)


@rl_training.hookimpl
def rl_training_log_sinks() -> dict[str, Any]:
    """Offer the ``wandb`` sink."""
    return {"wandb": WandbSink}
