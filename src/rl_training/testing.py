"""Test helpers for rl-training and for authors of sink packages.

``SinkContract`` is the behaviour every sink must have; a sink package's whole
contract test is two lines::

    from rl_training.testing import SinkContract

    class TestCsvSink(SinkContract):
        sink_name = "csv"

This module imports pytest; the runtime never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from rl_training.config import TrainConfig
from rl_training.experiment.logging import STATUSES, CompositeLogger, Sink
from rl_training.experiment.run import RunContext, create_run_context
from rl_training.plugins import available_sinks


def tiny_config(**overrides: Any) -> TrainConfig:
    """A valid, tiny :class:`TrainConfig` (PPO on CartPole, 64 steps), with overrides."""
    fields: dict[str, Any] = {
        "algo": "ppo",
        "env_id": "CartPole-v1",
        "seed": 0,
        "total_timesteps": 64,
        "log_sinks": ("json",),
    }
    fields.update(overrides)
    return TrainConfig(**fields)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"not strict JSON (RFC 8259): bare {token} token")


def strict_json_loads(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` tokens, as RFC 8259 does."""
    return json.loads(text, parse_constant=_reject_constant)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line of a ``metrics.jsonl``, parsed strictly; fails on a partial line."""
    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError(f"{path}: last line is not terminated: {text.splitlines()[-1]!r}")
    return [strict_json_loads(line) for line in text.splitlines()]


def decode_json_number(value: Any) -> Any:
    """Undo the ``json`` sink's spelling of non-finite floats."""
    if isinstance(value, str):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value, value)
    return value


def event_files(tb_dir: str | os.PathLike[str]) -> list[Path]:
    """The TensorBoard event files anywhere under ``tb_dir``, sorted."""
    return sorted(Path(tb_dir).rglob("events.out.tfevents.*"))


def load_events(tb_dir: str | os.PathLike[str]) -> Any:
    """The ``EventAccumulator`` TensorBoard's server reads ``tb_dir`` with, fully loaded.

    It is ``plugin_event_accumulator``'s (not the legacy ``event_accumulator``, which
    purges on every ``SessionLog.START`` and so hides what the server shows), keeping
    every point; scalars are tensors there (see :func:`read_scalars`).
    """
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def read_scalars(tb_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` as TensorBoard's server reads ``tb_dir``."""
    from tensorboard.util import tensor_util

    accumulator = load_events(tb_dir)
    return {
        tag: [(event.step, tensor_util.make_ndarray(event.tensor_proto).item())
              for event in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
    }  # fmt: skip


WALL_CLOCK_KEYS: frozenset[str] = frozenset({"time", "time/sps"})
"""Row fields that differ between two otherwise identical runs."""


def without_wall_clock(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` without :data:`WALL_CLOCK_KEYS`, for comparing runs."""
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS} for row in rows]


def assert_sinks_agree(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Assert that a run's ``metrics.jsonl`` and TensorBoard hold the same points.

    Every JSONL line must be strict JSON with a step that never decreases; every
    metric must have the same steps and values (to float32 precision) in both.

    Returns:
        The ``metrics.jsonl`` rows.
    """
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps), "step must never decrease"
    scalars = read_scalars(run_dir / "tensorboard")
    keys = set().union(*rows) - {"step", "time"}
    assert keys == set(scalars), keys ^ set(scalars)
    for key in keys:
        json_points = [(row["step"], decode_json_number(row[key])) for row in rows if key in row]
        tb_points = scalars[key]
        assert [s for s, _ in tb_points] == [s for s, _ in json_points], key
        for (_, a), (_, b) in zip(json_points, tb_points, strict=True):
            a = float(a)
            assert (
                (math.isnan(a) and math.isnan(b)) or b == a or abs(b - a) <= 1e-6 * max(1.0, abs(a))
            ), (key, a, b)
    return rows


RECORDING_SINK_PLUGIN = """
    import rl_training

    class RecordingSink:
        def __init__(self, run_context):
            self.path = run_context.run_dir / "recording.txt"
            self.path.write_text("")

        def log_config(self, config):
            with open(self.path, "a") as f:
                f.write(f"config {sorted(config)}\\n")

        def log_metrics(self, metrics, step):
            with open(self.path, "a") as f:
                f.write(f"metrics {step} {sorted(metrics.items())}\\n")

        def close(self, status="finished"):
            with open(self.path, "a") as f:
                f.write(f"close {status}\\n")

    @rl_training.hookimpl
    def rl_training_log_sinks():
        return {"recording": RecordingSink}
"""
"""Source of a plugin module offering a ``recording`` sink that writes what it gets to
``recording.txt`` (for :class:`PluginInstaller`)."""


SLOW_SINK_PLUGIN = """
import time

import rl_training


class Slow:
    def __init__(self, run_context):
        self.path = run_context.run_dir / "slow.txt"
        self.rows = []

    def log_config(self, config):
        pass

    def log_metrics(self, metrics, step):
        time.sleep(DELAY)
        self.rows.append(step)

    def close(self, status="finished"):
        self.path.write_text(" ".join(map(str, self.rows)) + " " + status)


@rl_training.hookimpl
def rl_training_log_sinks():
    return {"slow": Slow}
"""
"""Source of a plugin module offering a ``slow`` sink (it declares no ``delivery``: a
background sink) that sleeps ``DELAY`` seconds per ``log_metrics`` (replace ``DELAY``
before installing) and writes the steps it got and its closing status to ``slow.txt``."""


class PluginInstaller:
    """Installs real throwaway plugin distributions: a module and a ``*.dist-info``
    with ``entry_points.txt``, in a directory put first on ``sys.path``.

    Args:
        root: A new directory to install into.
        monkeypatch: Undoes the ``sys.path`` change after the test.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.modules: list[str] = []
        root.mkdir()
        monkeypatch.syspath_prepend(str(root))

    def install(
        self, dist_name: str, source: str, *, entry_name: str | None = None, version: str = "1.0"
    ) -> str:
        """Install a one-module distribution whose ``rl_training`` entry point is that
        module; return the module's (unique) name."""
        module = f"{dist_name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (self.root / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n"
        )
        (info / "entry_points.txt").write_text(
            f"[rl_training]\n{entry_name or dist_name} = {module}\n"
        )
        importlib.invalidate_caches()
        self.modules.append(module)
        return module

    def uninstall_all(self) -> None:
        """Forget the installed modules (the directory goes with the test's tmp_path)."""
        for module in self.modules:
            sys.modules.pop(module, None)


def _mentioned_under(root: Path, text: str) -> bool:
    """Whether ``root``, or any file under it, holds ``text`` (UTF-8), for sinks with no reader."""
    needle = text.encode("utf-8")
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return any(needle in p.read_bytes() for p in files)


def _snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


class SinkContract:
    """Behaviour every sink must have. Subclass it and set ``sink_name``."""

    sink_name: ClassVar[str]
    """The name the sink is installed under."""
    shared_files: ClassVar[tuple[str, ...]] = ()
    """Names the sink deliberately writes beside the run directories, in the output
    directory, shared by every run (an MLflow store, say). Anything else it writes
    must be inside the run directory."""
    drops_points_after_resume_step: ClassVar[bool] = True
    """Whether the sink, opened with ``RunContext.resume_step`` S, removes what the
    earlier attempt logged after S (the built-ins do). A store that cannot delete
    points keeps them and says so in its documentation: set this to ``False`` and the
    contract checks that the resumed points follow the kept ones."""

    def read_back(self, run_context: RunContext) -> Mapping[str, list[tuple[int, float]]] | None:
        """What the closed sink wrote, as ``key -> [(step, value), ...]``.

        Override it where the sink's output can be read back (the built-ins read
        ``metrics.jsonl`` and TensorBoard's events; a CSV sink its file): the
        contract then checks every value and step exactly. The default, ``None``,
        leaves a weaker check: the logged keys appear in a file under the run
        directory.
        """
        return None

    def _check_written(
        self,
        run_context: RunContext,
        expected: Mapping[str, list[tuple[int, float]]],
        *,
        exactly: bool = True,
    ) -> None:
        """Each key's points are ``expected`` (``exactly=False``: they hold ``expected``
        in order, other points between them allowed)."""
        points = self.read_back(run_context)
        if points is None:
            places = [
                run_context.run_dir,
                *(run_context.run_dir.parent / f for f in self.shared_files),
            ]
            for key in expected:
                assert any(_mentioned_under(p, key) for p in places), f"{key!r} written nowhere"
            return
        for key, want in expected.items():
            got = [(int(step), float(value)) for step, value in points.get(key, [])]
            if not exactly:
                rest = iter(got)  # each wanted point found after the one before it
                assert all(any(_same(w, g) for g in rest) for w in want), (key, want, got)
                continue
            assert [s for s, _ in got] == [s for s, _ in want], key
            for w, g in zip(want, got, strict=True):
                assert _same(w, g), (key, w, g)

    @pytest.fixture
    def run_context(self, tmp_path: Path) -> RunContext:
        """A fresh run directory under ``tmp_path / "runs"``."""
        return create_run_context(tiny_config(output_dir=tmp_path / "runs"))

    @pytest.fixture
    def sink(self, run_context: RunContext) -> Iterator[Sink]:
        """The sink under test, made by its installed factory and closed afterwards."""
        sink = available_sinks()[self.sink_name].factory(run_context)
        yield sink
        sink.close()

    def test_is_a_sink(self, sink: Sink) -> None:
        """It has log_config, log_metrics and close."""
        assert isinstance(sink, Sink)

    def test_is_listed_with_its_distribution(self) -> None:
        """available_sinks() lists it with the distribution and version providing it."""
        info = available_sinks()[self.sink_name]
        assert info.name == self.sink_name
        assert info.distribution and info.version
        assert info.distribution != "(registered directly)"

    def test_takes_plain_scalars_including_non_finite(
        self, sink: Sink, run_context: RunContext
    ) -> None:
        """Ints, floats, bools, NaN and +-inf are all accepted and written as given."""
        sink.log_metrics({"a/int": 3, "a/float": 0.25, "a/bool": True}, 0)
        sink.log_metrics({"b/nan": math.nan, "b/inf": math.inf, "b/ninf": -math.inf}, 1)
        sink.close()
        self._check_written(
            run_context,
            {
                "a/int": [(0, 3.0)],
                "a/float": [(0, 0.25)],
                "a/bool": [(0, 1.0)],
                "b/nan": [(1, math.nan)],
                "b/inf": [(1, math.inf)],
                "b/ninf": [(1, -math.inf)],
            },
        )

    def test_steps_may_start_at_zero_and_repeat(self, sink: Sink, run_context: RunContext) -> None:
        """Step 0 and a repeated step are kept, in order."""
        for i, step in enumerate((0, 0, 5, 5)):
            sink.log_metrics({"x/repeated": float(i)}, step)
        sink.close()
        self._check_written(run_context, {"x/repeated": [(0, 0.0), (0, 1.0), (5, 2.0), (5, 3.0)]})

    def test_accepts_empty_metrics(self, sink: Sink) -> None:
        """An empty mapping does not raise."""
        sink.log_metrics({}, 0)

    def test_accepts_nested_json_config(self, sink: Sink) -> None:
        """A nested, JSON-shaped config is accepted."""
        sink.log_config(
            {
                "algo": "ppo",
                "n": 1,
                "lr": 3e-4,
                "flag": False,
                "none": None,
                "nested": {"list": [1, 2.5, "x"], "deeper": {"k": "v"}},
                "empty": {},
            }
        )

    def test_does_not_mutate_inputs(self, sink: Sink) -> None:
        """Read-only mappings go through, and what was passed is unchanged."""
        metrics = {"m/a": 1.0, "m/b": 2}
        config = {"algo": "ppo", "nested": {"x": 1}}
        sink.log_config(types.MappingProxyType(config))
        sink.log_metrics(types.MappingProxyType(metrics), 3)
        assert metrics == {"m/a": 1.0, "m/b": 2}
        assert config == {"algo": "ppo", "nested": {"x": 1}}

    def test_close_twice_is_harmless(self, sink: Sink) -> None:
        """A second close() does not raise."""
        sink.log_metrics({"x": 1.0}, 0)
        sink.close()
        sink.close()

    @pytest.mark.parametrize("status", STATUSES)
    def test_closes_with_each_status(self, run_context: RunContext, status: str) -> None:
        """A run closed "finished", "failed" or "interrupted" keeps everything it logged."""
        sink = available_sinks()[self.sink_name].factory(run_context)
        sink.log_config({"algo": "ppo"})
        sink.log_metrics({"s/value": 1.5}, 0)
        sink.log_metrics({"s/value": 2.5}, 7)
        CompositeLogger({self.sink_name: sink}).close(status)  # as a run closes its sinks
        self._check_written(run_context, {"s/value": [(0, 1.5), (7, 2.5)]})

    def test_resume_continues_one_history(self, run_context: RunContext) -> None:
        """Opened again with resume_step S, the sink keeps the points up to S, drops the
        earlier attempt's after S (see drops_points_after_resume_step), adds the new ones."""
        factory = available_sinks()[self.sink_name].factory
        first = factory(run_context)
        first.log_config({"algo": "ppo"})
        for step in (0, 10, 20, 30):
            first.log_metrics({"r/value": float(step)}, step)
        CompositeLogger({self.sink_name: first}).close("interrupted")
        second = factory(dataclasses.replace(run_context, resume_step=10))
        second.log_config({"algo": "ppo"})
        for step in (20, 30, 40):
            second.log_metrics({"r/value": step + 0.5, "r/after_resume": 1.0}, step)
        CompositeLogger({self.sink_name: second}).close("finished")
        kept, new = [(0, 0.0), (10, 10.0)], [(20, 20.5), (30, 30.5), (40, 40.5)]
        self._check_written(
            run_context,
            {"r/value": kept + new, "r/after_resume": [(step, 1.0) for step, _ in new]},
            exactly=self.drops_points_after_resume_step,
        )

    def test_takes_every_kind_it_declares(self, run_context: RunContext) -> None:
        """Every kind in the sink's ``kinds`` (scalars only if it declares none) goes
        through a strict composite, twice, without an error or a lost call."""
        from rl_training.experiment.logging import kinds_of
        from rl_training.experiment.media import Histogram, Image, Text, Video

        samples = {
            "scalar": 1.0,
            "image": Image(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)),
            "video": Video(np.zeros((3, 4, 6, 3), np.uint8), fps=10),
            "histogram": Histogram(np.arange(10.0), bins=5),
            "text": Text("contract *text*"),
        }
        sink = available_sinks()[self.sink_name].factory(run_context)
        kinds = kinds_of(self.sink_name, sink)
        logger = CompositeLogger({self.sink_name: sink}, strict=True)
        for step in (1, 2):
            logger.log_metrics({f"kind/{k}": samples[k] for k in sorted(kinds)}, step)
        logger.close("finished")
        stats = logger.delivery_stats()[self.sink_name]
        assert stats["error"] is None and stats["dropped"] == stats["undelivered"] == 0, stats
        if "scalar" in kinds:
            self._check_written(run_context, {"kind/scalar": [(1, 1.0), (2, 1.0)]})

    def test_writes_only_inside_the_run_directory(self, run_context: RunContext) -> None:
        """Nothing appears outside run_context.run_dir."""
        root = run_context.run_dir.parent.parent
        before = _snapshot(root) - _snapshot(run_context.run_dir)
        sink = available_sinks()[self.sink_name].factory(run_context)
        sink.log_config({"algo": "ppo"})
        sink.log_metrics({"x": 1.0}, 0)
        sink.close()
        after = _snapshot(root) - _snapshot(run_context.run_dir)
        output_dir = run_context.run_dir.parent
        shared = {output_dir / name for name in self.shared_files}
        outside = {p for p in after - before if not any(p == s or s in p.parents for s in shared)}
        assert outside == set(), outside


def wait_for(predicate: Any, proc: subprocess.Popen[Any], timeout: float = 90.0) -> Any:
    """Poll ``predicate()`` until it returns something true, and return that; fail if
    ``proc`` ends first, or (killing its process group) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"the process ended early ({proc.returncode}): {err}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out after {timeout:g} s waiting for the process")


@contextlib.contextmanager
def killed_on_exit(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """A block after which ``proc`` (started with ``start_new_session=True``) is gone:
    if it still runs, its whole process group is killed; a test never leaves one behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


class TensorBoardServer:
    """``tensorboard --logdir`` on a free port of 127.0.0.1, asked over its HTTP API."""

    def __init__(self, logdir: Path, load_fast: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", "0", f"--load_fast={str(load_fast).lower()}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.url = ""
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while time.monotonic() < deadline and not self.url:  # its banner names the port
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                pytest.fail(f"tensorboard ended ({self.proc.returncode})")
            if " at http://127.0.0.1:" in line:
                self.url = line.split(" at ")[1].split()[0].rstrip("/")
        if not self.url:
            self.close()
            pytest.fail("tensorboard did not start within 60 s")

    def get(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer to ``path`` (a POST of ``body`` where one is given)."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310  # 127.0.0.1
            return json.loads(answer.read())

    def scalars(self, tag: str, want_last_step: int) -> list[tuple[int, float]]:
        """The server's ``(step, value)`` points of ``tag`` once it has read up to the end."""
        from urllib.parse import quote

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = self.get("/data/runs")
            tags = self.get("/data/plugin/scalars/tags") if runs else {}
            if runs and tag in tags.get(runs[0], {}):
                query = f"run={quote(runs[0])}&tag={quote(tag)}"
                points = self.get(f"/data/plugin/scalars/scalars?{query}")
                if points and points[-1][1] == want_last_step:
                    return [(step, value) for _, step, value in points]
            time.sleep(0.5)
        pytest.fail(f"tensorboard did not serve {tag!r} up to step {want_last_step} in 60 s")

    def raw(self, path: str) -> bytes:
        """The bytes of ``path`` (an image the Images tab shows, say)."""
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as answer:  # noqa: S310
            data: bytes = answer.read()
            return data

    def wait_for_tags(self, plugin: str, tags: set[str], timeout: float = 60.0) -> str:
        """The first run's name once ``/data/plugin/<plugin>/tags`` lists every tag."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.get("/data/runs")
            listed = self.get(f"/data/plugin/{plugin}/tags") if runs else {}
            if runs and tags <= set(listed.get(runs[0], ())):
                return str(runs[0])
            time.sleep(0.5)
        pytest.fail(f"tensorboard did not list {sorted(tags)} in its {plugin} tab in {timeout} s")

    def session_statuses(self) -> list[str]:
        """The HParams tab's session status of every run."""
        groups = self.get("/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"],
        })["sessionGroups"]  # fmt: skip
        return [session["status"] for group in groups for session in group["sessions"]]

    def close(self) -> None:
        """Stop the server and its process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=30)


def _same(a: tuple[int, float], b: tuple[int, float]) -> bool:
    """Two ``(step, value)`` points are equal (NaN equals NaN)."""
    return a[0] == b[0] and ((math.isnan(a[1]) and math.isnan(b[1])) or a[1] == b[1])


__all__ = [
    "SLOW_SINK_PLUGIN",
    "SinkContract",
    "TensorBoardServer",
    "decode_json_number",
    "event_files",
    "load_events",
    "read_jsonl",
    "read_scalars",
    "strict_json_loads",
    "tiny_config",
    "wait_for",
    "killed_on_exit",
]
