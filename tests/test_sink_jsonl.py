"""The json sink's file formats: strict JSON, whole flushed lines, pretty config."""

from __future__ import annotations

import json
import math

import pytest

from rl_training.experiment.sinks.jsonl import JsonlSink
from rl_training.runtime.context import LineFile
from rl_training.runtime.run_utils import create_run_context
from rl_training.testing import read_jsonl, strict_json_loads


@pytest.fixture
def context(tiny_config):
    return create_run_context(tiny_config())


def test_each_call_is_one_line_flushed_before_return(context):
    """After log_metrics returns, the line is already in the file."""
    sink = JsonlSink(context)
    sink.log_metrics({"a": 1}, 0)
    assert context.metrics_path.read_text().count("\n") == 1
    sink.log_metrics({"a": 2}, 1)
    assert read_jsonl(context.metrics_path)[1]["a"] == 2
    sink.close()


def test_line_has_step_time_and_every_metric(context):
    """A row holds step, time (Unix seconds) and the metrics, with their types."""
    sink = JsonlSink(context)
    sink.log_metrics({"x/int": 3, "x/float": 0.5, "x/bool": False, "ünï/cödé": 1.0}, 7)
    sink.close()
    (row,) = read_jsonl(context.metrics_path)
    assert row["step"] == 7 and isinstance(row["time"], float)
    assert abs(row["time"] - __import__("time").time()) < 60
    assert row["x/int"] == 3 and type(row["x/int"]) is int
    assert row["x/bool"] is False
    assert row["ünï/cödé"] == 1.0


def test_non_finite_values_are_strings(context):
    """NaN and infinities are written as "NaN", "Infinity", "-Infinity", keeping the file strict."""
    sink = JsonlSink(context)
    sink.log_metrics({"n": math.nan, "p": math.inf, "m": -math.inf, "ok": 1.5}, 0)
    sink.close()
    text = context.metrics_path.read_text()
    with pytest.raises(ValueError, match="NaN"):
        strict_json_loads('{"a": NaN}')
    (row,) = read_jsonl(context.metrics_path)
    assert row == {
        "step": 0,
        "time": row["time"],
        "n": "NaN",
        "p": "Infinity",
        "m": "-Infinity",
        "ok": 1.5,
    }
    assert "NaN," in text or '"NaN"' in text


def test_config_is_pretty_sorted_and_strict(context):
    """config.json is indented, key-sorted JSON; non-finite floats are strings there too."""
    sink = JsonlSink(context)
    sink.log_config({"b": 1, "a": {"z": math.inf, "y": [1, "x"]}})
    sink.close()
    text = context.config_path.read_text()
    assert text.startswith("{\n  ")
    assert strict_json_loads(text) == {"a": {"y": [1, "x"], "z": "Infinity"}, "b": 1}
    assert text.index('"a"') < text.index('"b"')


def test_second_config_replaces_the_first_atomically(context):
    """A later log_config replaces config.json and leaves no temporary file."""
    sink = JsonlSink(context)
    sink.log_config({"v": 1})
    sink.log_config({"v": 2})
    sink.close()
    assert json.loads(context.config_path.read_text()) == {"v": 2}
    assert sorted(p.name for p in context.run_dir.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "tensorboard",
    ]


def test_log_after_close_raises(context):
    """Writing to a closed sink is an error, not a silent loss."""
    sink = JsonlSink(context)
    sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.log_metrics({"a": 1}, 0)


def _line_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each line, its newline included."""
    spans, start = [], 0
    for line in data.splitlines(keepends=True):
        spans.append((start, start + len(line)))
        start += len(line)
    return spans


def test_lines_never_straddle_a_page_so_a_kill_cannot_cut_them(context):
    """Linux can stop a write killed between two pages: every line that fits in one
    stays in one (the one before is padded with spaces), rows of varying length too."""
    page = LineFile.PAGE
    sink = JsonlSink(context)
    for step in range(400):
        width = (20, 6, 11)[step % 3]
        sink.log_metrics({f"k{i}/" + "x" * (step % 97): float(i) for i in range(width)}, step)
    sink.close()
    data = context.metrics_path.read_bytes()
    spans = _line_spans(data)
    rows = read_jsonl(context.metrics_path)  # strict JSON: the padding is insignificant space
    assert [r["step"] for r in rows] == list(range(400))
    assert len({start // page for start, _ in spans}) > 20  # the test crosses many pages
    for start, end in spans[3:]:  # after the first rows have shown the lengths to expect
        assert start // page == (end - 1) // page, (start, end)
    padded = [(start, end) for start, end in spans if data[end - 2 : end] == b" \n"]
    assert padded and all(end % page == 0 for _, end in padded)  # only up to a page's end


def test_a_line_longer_than_a_page_is_still_one_whole_line(context):
    """A row too long for a page is written whole (it cannot be kept in one page)."""
    sink = JsonlSink(context)
    sink.log_metrics({"short": 1.0}, 0)
    sink.log_metrics({f"long/{i}": float(i) for i in range(600)}, 1)
    sink.log_metrics({"short": 2.0}, 2)
    sink.close()
    rows = read_jsonl(context.metrics_path)
    assert [len(r) for r in rows] == [3, 602, 3]
    assert len(context.metrics_path.read_bytes().splitlines()[1]) > LineFile.PAGE
