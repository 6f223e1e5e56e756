"""``rl-train report``: results over seeds as RL papers give them, from ``metrics.jsonl``.

Runs are grouped by (algorithm, env id). For each group: every run's final return
(the mean of its last ``window`` episodes) and best return (the highest such mean
along the run), the interquartile mean (IQM) of the final returns with a 95 %
bootstrap confidence interval (Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice"; within one group there is one task, so the stratified
bootstrap is a bootstrap over its runs), and a PNG of the learning curves: the
mean over seeds with a shaded 95 % bootstrap band, x = environment steps.

Only ``metrics.jsonl`` (and ``run.json`` / ``config.json`` for the names) is read,
so any run with the ``json`` sink works, ``create_run`` runs that log
``episode/return`` included. scipy and matplotlib come with the ``report`` extra
(``pip install "rl-training[report]"``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from rl_training.errors import ConfigError
from rl_training.runtime.context import RunFiles

RETURN_KEY = "episode/return"
"""The metric the report reads."""

CURVE_POINTS = 200
"""Points on a learning curve's step axis."""

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of every bootstrap confidence interval."""

_STAMP_RE = re.compile(r"-\d{8}T\d{6}Z(?:-.*)?$")


class MissingExtraError(RuntimeError):
    """scipy or matplotlib is not installed."""


@dataclass
class RunResult:
    """One run's episodes, read back from its ``metrics.jsonl``."""

    run_dir: Path
    algo: str
    env_id: str
    seed: str
    steps: np.ndarray
    """The step each episode ended at."""
    returns: np.ndarray
    """Each episode's return."""
    window: int
    status: str = "unknown"
    """``run.json``'s status: ``finished``, ``interrupted``, ``failed``, ``running``
    (or killed), ``unknown`` (no ``run.json``)."""
    budget: int | None = None
    """The run's ``total_timesteps``, where its config says."""

    @property
    def finished(self) -> bool:
        """Whether the run spent its budget (``run.json`` says ``finished``)."""
        return self.status == "finished"

    @property
    def smoothed(self) -> np.ndarray:
        """The running mean of the last ``window`` returns, at each episode."""
        cumulative = np.concatenate([[0.0], np.cumsum(self.returns)])
        index = np.arange(1, len(self.returns) + 1)
        start = np.maximum(index - self.window, 0)
        result: np.ndarray = (cumulative[index] - cumulative[start]) / (index - start)
        return result

    @property
    def final(self) -> float:
        """The mean return of the last ``window`` episodes."""
        return float(self.smoothed[-1])

    @property
    def best(self) -> float:
        """The highest mean of ``window`` consecutive episodes' returns along the run
        (over fewer at the start)."""
        return float(self.smoothed.max())


@dataclass
class Group:
    """The runs of one (algorithm, env id)."""

    algo: str
    env_id: str
    runs: list[RunResult] = field(default_factory=list)
    iqm: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    counted: list[RunResult] = field(default_factory=list)
    """The runs the IQM is over: the finished ones, unless unfinished are included."""


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each is a run (it holds ``metrics.jsonl``) or
    a directory of runs (``runs/``).

    Raises:
        ValueError: no path given, a path that does not exist or holds no run.
    """
    if not paths:
        raise ConfigError("report: give at least one run directory (or a directory of runs)")
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise ConfigError(f"report: {str(path)!r} {what} (give run directories)")
        if RunFiles(path).metrics.is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if RunFiles(p).metrics.is_file())
        if not children:
            raise ConfigError(
                f"report: {str(path)!r} holds no run (no metrics.jsonl in it or its "
                "subdirectories; the json sink writes it)"
            )
        found.extend(children)
    unique = dict.fromkeys(p.resolve() for p in found)
    return list(unique)


def read_run(run_dir: Path, window: int) -> RunResult | None:
    """A run's episodes and names, or ``None`` if it logged no ``episode/return``.

    An unterminated last line that is not JSON (a row longer than a page, cut by a
    kill: see :class:`~rl_training.runtime.context.LineFile`) is left out, as a resume
    drops it.

    Raises:
        ValueError: a line of ``metrics.jsonl`` is not JSON (the line is named).
    """
    info = _read_json(RunFiles(run_dir).run_info)
    config = _read_json(RunFiles(run_dir).config)
    steps: list[int] = []
    returns: list[float] = []
    with open(RunFiles(run_dir).metrics, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                if not line.endswith("\n"):  # a row cut by a kill (longer than a page)
                    break
                raise ConfigError(
                    f"report: {run_dir / 'metrics.jsonl'} line {number} is not JSON ({error})"
                ) from None
            value = row.get(RETURN_KEY) if isinstance(row, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                steps.append(int(row["step"]))
                returns.append(float(value))
    if not returns:
        return None
    name = str(info.get("name") or run_dir.name)
    algo = info.get("algo") or config.get("algo") or _STAMP_RE.sub("", name)
    env_id = info.get("env_id") or config.get("env_id") or "-"
    seed = info.get("seed", config.get("seed"))
    budget = config.get("total_timesteps")
    return RunResult(
        run_dir=run_dir,
        algo=str(algo),
        env_id=str(env_id),
        seed=str(seed) if seed is not None else run_dir.name,
        steps=np.asarray(steps, dtype=np.int64),
        returns=np.asarray(returns, dtype=np.float64),
        window=window,
        status=str(info.get("status") or "unknown"),
        budget=budget if isinstance(budget, int) and not isinstance(budget, bool) else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def group_runs(runs: Iterable[RunResult]) -> list[Group]:
    """Runs by (algorithm, env id), in that order; each group's runs by seed."""
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        groups.setdefault((run.algo, run.env_id), Group(run.algo, run.env_id)).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: (_seed_key(r.seed), str(r.run_dir)))
    return [groups[key] for key in sorted(groups)]


def _seed_key(seed: str) -> tuple[int, int | str]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def iqm(values: np.ndarray, axis: int = -1) -> Any:
    """Interquartile mean: the mean of the middle 50 % (scipy's 25 % trimmed mean)."""
    from scipy import stats

    return stats.trim_mean(values, 0.25, axis=axis)


def bootstrap_ci(
    values: np.ndarray, statistic: Any, *, seed: int = 0, axis: int = 0
) -> tuple[Any, Any]:
    """The 95 % percentile-bootstrap interval of ``statistic`` over ``values``' first
    axis (scipy.stats.bootstrap); NaN with fewer than two values."""
    from scipy import stats

    if values.shape[axis] < 2:
        nan = np.full(np.delete(values.shape, axis), math.nan) if values.ndim > 1 else math.nan
        return nan, nan
    result = stats.bootstrap(
        (values,),
        statistic,
        axis=axis,
        confidence_level=0.95,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return interval.low, interval.high


def summarise(group: Group, *, include_unfinished: bool = False) -> None:
    """Set the group's IQM of final returns and its 95 % bootstrap interval, over its
    finished runs (every run with ``include_unfinished``); NaN over none."""
    group.counted = [r for r in group.runs if include_unfinished or r.finished]
    if not group.counted:
        group.iqm, group.ci = math.nan, (math.nan, math.nan)
        return
    finals = np.array([run.final for run in group.counted])
    group.iqm = float(iqm(finals))
    low, high = bootstrap_ci(finals, iqm)
    group.ci = (float(low), float(high))


def curves(group: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, low, high)`` on a step axis up to the longest run's last episode.

    ``mean`` is over the runs that reached each step (each run counts up to its own
    last episode, so a short run neither cuts the curve nor drags it); ``low`` and
    ``high``, the 95 % bootstrap band, are drawn where every run is present (NaN after
    the shortest run's end).
    """
    start = max(int(run.steps[0]) for run in group.runs)
    end = max(int(run.steps[-1]) for run in group.runs)
    grid = np.unique(np.linspace(start, max(end, start), CURVE_POINTS).astype(np.int64))
    values = np.stack([_on_grid(run, grid) for run in group.runs])  # (runs, points)
    present = np.isfinite(values)
    mean = np.where(present, values, 0.0).sum(axis=0) / present.sum(axis=0)
    low, high = (np.full(grid.shape, math.nan) for _ in range(2))
    everyone = present.all(axis=0)
    if everyone.any():
        low[everyone], high[everyone] = bootstrap_ci(values[:, everyone], np.mean, axis=0)
    return grid, mean, low, high


def _on_grid(run: RunResult, grid: np.ndarray) -> np.ndarray:
    """The run's latest smoothed return at or before each step of ``grid``; NaN past
    its last episode."""
    values = run.smoothed[np.searchsorted(run.steps, grid, side="right") - 1]
    return np.where(grid <= run.steps[-1], values, math.nan)


PANEL_INCHES = (6.0, 4.0)
"""Width and height of one environment's panel."""
DPI = 100


def plot(groups: Sequence[Group], path: Path) -> tuple[int, int]:
    """Write the learning curves, one panel per env id and one line per algorithm.

    Returns:
        The image's ``(width, height)`` in pixels.
    """
    from matplotlib.figure import Figure

    env_ids = sorted({g.env_id for g in groups})
    width, height = PANEL_INCHES[0] * len(env_ids), PANEL_INCHES[1]
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, len(env_ids), squeeze=False)[0]
    for ax, env_id in zip(axes, env_ids, strict=True):
        for group in (g for g in groups if g.env_id == env_id):
            steps, mean, low, high = curves(group)
            label = f"{group.algo} ({len(group.runs)} run{'s' * (len(group.runs) != 1)})"
            (line,) = ax.plot(steps, mean, label=label)
            for run in group.runs:  # each run to its own length; unfinished ones dashed
                ax.plot(steps, _on_grid(run, steps), color=line.get_color(), alpha=0.3,
                        linewidth=0.8, linestyle="-" if run.finished else "--")  # fmt: skip
            if np.isfinite(low).any():
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.25)
        ax.set_title(env_id)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"episode return (mean of last {groups[0].runs[0].window})")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    figure.suptitle(
        "thick: mean over the runs at each step; thin: each run (dashed: unfinished); "
        "shaded: 95% bootstrap CI"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return round(width * DPI), round(height * DPI)


def _iqm_line(group: Group, include_unfinished: bool) -> str:
    """The group's IQM, CI and worst final return, saying which runs they are over."""
    left_out = len(group.runs) - len(group.counted)
    over = f"over {len(group.counted)} {'' if include_unfinished else 'finished '}run(s)"
    if left_out:
        over += f"; {left_out} unfinished left out (--include-unfinished counts them)"
    if not group.counted:
        return f"IQM of final returns n/a: no finished run ({over})"
    return (
        f"IQM of final returns {_fmt(group.iqm)}, 95% CI [{_fmt(group.ci[0])}, "
        f"{_fmt(group.ci[1])}]; worst {min(r.final for r in group.counted):.1f} ({over})"
    )


def _check_extra() -> None:
    missing = []
    for module in ("scipy", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"rl-train report needs {' and '.join(missing)}: pip install 'rl-training[report]'"
        )


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def report(
    paths: Sequence[str | Path],
    out: str | Path = "report",
    *,
    window: int = 100,
    include_unfinished: bool = False,
    stream: TextIO,
    warn: TextIO,
) -> list[Group]:
    """Print the tables for ``paths``' runs and write ``out/learning_curves.png`` and
    ``out/report.json``.

    Every run is listed with its status and budget and drawn to its own length; the
    IQM is over the finished runs only, unless ``include_unfinished``.

    Raises:
        ValueError: bad paths, no run with ``episode/return``, or a bad ``window``.
        MissingExtraError: scipy or matplotlib is missing.
    """
    if window < 1:
        raise ConfigError(f"--window: {window} is not a positive number of episodes")
    run_dirs = find_runs(paths)
    _check_extra()
    results = []
    for run_dir in run_dirs:
        result = read_run(run_dir, window)
        if result is None:
            print(f"rl-train report: skipped {run_dir}: no {RETURN_KEY} in metrics.jsonl",
                  file=warn)  # fmt: skip
        else:
            results.append(result)
    if not results:
        raise ConfigError(f"report: none of the {len(run_dirs)} run(s) logged {RETURN_KEY}")
    groups = group_runs(results)
    for group in groups:
        summarise(group, include_unfinished=include_unfinished)
        print(f"{group.algo} on {group.env_id}: {len(group.runs)} run(s), returns = mean of "
              f"the last {window} episodes", file=stream)  # fmt: skip
        print(f"  {'seed':>8}  {'final':>9}  {'best':>9}  {'episodes':>8}  {'steps':>10}  "
              f"{'budget':>10}  {'status':<11}  run", file=stream)  # fmt: skip
        for run in group.runs:
            budget = "?" if run.budget is None else str(run.budget)
            print(f"  {run.seed:>8}  {run.final:>9.1f}  {run.best:>9.1f}  {len(run.returns):>8}"
                  f"  {int(run.steps[-1]):>10}  {budget:>10}  {run.status:<11}  "
                  f"{run.run_dir.name}", file=stream)  # fmt: skip
        print(f"  {_iqm_line(group, include_unfinished)}", file=stream)
    out = Path(out)
    png = out / "learning_curves.png"
    width, height = plot(groups, png)
    summary = [
        {
            "algo": g.algo,
            "env_id": g.env_id,
            "iqm": _number(g.iqm),
            "ci": [_number(v) for v in g.ci],
            "runs": [
                {
                    "run_dir": str(r.run_dir),
                    "seed": r.seed,
                    "final": r.final,
                    "best": r.best,
                    "episodes": len(r.returns),
                    "steps": int(r.steps[-1]),
                    "budget": r.budget,
                    "status": r.status,
                    "in_iqm": r in g.counted,
                }  # fmt: skip
                for r in g.runs
            ],
        }
        for g in groups
    ]
    settings = {"window": window, "include_unfinished": include_unfinished}
    (out / "report.json").write_text(
        json.dumps({**settings, "groups": summary}, indent=2, allow_nan=False),
        encoding="utf-8",
    )
    print(f"learning curves: {png} ({width}x{height})", file=stream)
    return groups


__all__ = [
    "Group",
    "MissingExtraError",
    "RunResult",
    "bootstrap_ci",
    "curves",
    "find_runs",
    "group_runs",
    "iqm",
    "plot",
    "read_run",
    "report",
]
