"""The tensorboard sink: one event per call, config as text and hparams in the run's own file."""

from __future__ import annotations

import math

import pytest

from rl_training.experiment.sinks.tensorboard import TensorBoardSink, flatten
from rl_training.runtime.run_utils import create_run_context
from rl_training.testing import event_files, load_events, read_scalars


@pytest.fixture
def context(tiny_config):
    return create_run_context(tiny_config(log_sinks=("tensorboard",)))


def _records(context):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (path,) = event_files(context.tensorboard_dir)
    return list(EventFileLoader(str(path)).Load())


def test_one_event_per_call_holding_every_metric(context):
    """Ten metrics of one call are one event at that step, read back by TensorBoard's reader."""
    sink = TensorBoardSink(context)
    for step in (0, 5):
        sink.log_metrics({f"g/m{i}": float(i + step) for i in range(10)}, step)
    sink.close()
    scalar_events = [
        e for e in _records(context) if e.summary.value and e.summary.value[0].tag.startswith("g/")
    ]
    assert [(e.step, len(e.summary.value)) for e in scalar_events] == [(0, 10), (5, 10)]
    scalars = read_scalars(context.tensorboard_dir)
    assert scalars["g/m3"] == [(0, 3.0), (5, 8.0)]


def test_non_finite_and_bool_values_are_floats(context):
    """NaN, infinities and bools reach TensorBoard as floats."""
    sink = TensorBoardSink(context)
    sink.log_metrics({"n": math.nan, "i": math.inf, "b": True, "k": 7}, 1)
    sink.close()
    scalars = read_scalars(context.tensorboard_dir)
    assert math.isnan(scalars["n"][0][1])
    assert (
        scalars["i"] == [(1, math.inf)]
        and scalars["b"] == [(1, 1.0)]
        and scalars["k"] == [(1, 7.0)]
    )


def test_config_as_text_and_hparams_in_the_same_directory(context):
    """The config is a text table and hparams session info, with no extra subdirectory."""
    from tensorboard.plugins.hparams import metadata as hp_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    sink = TensorBoardSink(context)
    sink.log_config(
        {
            "algo": "ppo",
            "seed": 3,
            "hyperparams": {"n_steps": 32, "anneal_lr": True},
            "log_sinks": ["tensorboard"],
            "note": "a|b",
        }
    )
    sink.log_metrics({"episode/return": 9.0}, 0)
    sink.close(status="interrupted")
    assert [p for p in context.tensorboard_dir.iterdir() if p.is_dir()] == []
    assert len(event_files(context.tensorboard_dir)) == 1

    accumulator = load_events(context.tensorboard_dir)
    (text_event,) = accumulator.Tensors("config/text_summary")
    table = text_event.tensor_proto.string_val[0].decode()
    assert "| algo | ppo |" in table and "| hyperparams.n_steps | 32 |" in table
    assert "a\\|b" in table

    content = accumulator.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["algo"].string_value == "ppo"
    assert start.hparams["seed"].number_value == 3
    assert start.hparams["hyperparams.anneal_lr"].bool_value is True
    assert start.hparams["log_sinks"].string_value == '["tensorboard"]'
    end = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.SESSION_END_INFO_TAG])
    from tensorboard.plugins.hparams import api_pb2

    assert end.session_end_info.status == api_pb2.Status.Value("STATUS_UNKNOWN")


def test_flatten_joins_nested_keys():
    """Nested mappings become dotted keys; lists and empty mappings stay values."""
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1], "e": {}}
