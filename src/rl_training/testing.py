"""Test helpers for rl-training and for authors of sink packages.

``SinkContract`` is the behaviour every sink must have; a sink package's whole
contract test is two lines::

    from rl_training.testing import SinkContract

    class TestCsvSink(SinkContract):
        sink_name = "csv"

This module imports pytest; the runtime never imports it.
"""

from __future__ import annotations

import json
import math
import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rl_training.config import TrainConfig
from rl_training.experiment.logging import Sink
from rl_training.plugins import available_sinks
from rl_training.runtime.run_utils import RunContext, create_run_context


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
    """An ``EventAccumulator`` over ``tb_dir``, fully loaded, keeping every point."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def read_scalars(tb_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` as TensorBoard's own reader sees ``tb_dir``."""
    accumulator = load_events(tb_dir)
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


class SinkContract:
    """Behaviour every sink must have. Subclass it and set ``sink_name``."""

    sink_name: ClassVar[str]
    """The name the sink is installed under."""

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

    def test_takes_plain_scalars_including_non_finite(self, sink: Sink) -> None:
        """Ints, floats, bools, NaN and +-inf are all accepted."""
        sink.log_metrics({"a/int": 3, "a/float": 0.25, "a/bool": True}, 0)
        sink.log_metrics({"b/nan": math.nan, "b/inf": math.inf, "b/ninf": -math.inf}, 1)

    def test_steps_may_start_at_zero_and_repeat(self, sink: Sink) -> None:
        """Step 0 and a repeated step are fine."""
        for step in (0, 0, 5, 5):
            sink.log_metrics({"x": float(step)}, step)

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

    def test_writes_only_inside_the_run_directory(self, run_context: RunContext) -> None:
        """Nothing appears outside run_context.run_dir."""
        root = run_context.run_dir.parent.parent
        before = _snapshot(root) - _snapshot(run_context.run_dir)
        sink = available_sinks()[self.sink_name].factory(run_context)
        sink.log_config({"algo": "ppo"})
        sink.log_metrics({"x": 1.0}, 0)
        sink.close()
        after = _snapshot(root) - _snapshot(run_context.run_dir)
        assert after == before


__all__ = [
    "SinkContract",
    "decode_json_number",
    "event_files",
    "load_events",
    "read_jsonl",
    "read_scalars",
    "strict_json_loads",
    "tiny_config",
]
