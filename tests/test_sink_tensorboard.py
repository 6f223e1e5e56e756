"""The tensorboard sink: one event per call, config as text and hparams in the run's own file."""

from __future__ import annotations

import dataclasses
import math
import shutil
import time

import pytest

from rl_training.experiment.logging import normalize_config
from rl_training.experiment.sinks.tensorboard import (
    EventFileWriter,
    TensorBoardSink,
    flatten,
    scalar_event,
)
from rl_training.runtime.run_utils import create_run_context
from rl_training.testing import event_files, load_events, read_scalars


@pytest.fixture
def context(tiny_config):
    return create_run_context(tiny_config(log_sinks=("tensorboard",)))


def _records(context):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (path,) = [p for p in event_files(context.tensorboard_dir) if p.suffix != ".session-end"]
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


@pytest.mark.parametrize(
    ("row", "step"),
    [
        ({"a": 1.5}, 0),
        ({"loss/é✓": -0.0, "b": True, "k": 7, "t" * 200: 3.25e-39}, 1),
        ({"n": math.nan, "i": math.inf, "-i": -math.inf, "big": 3.4e38, "x": 1 / 3}, 2**62 + 5),
        ({f"g{i}/" + "x" * 140: float(i) for i in range(3)}, 127),
        ({}, 128),
    ],
)
def test_scalar_events_are_serialised_as_protobuf_does(row, step):
    """The hand-framed scalar event is byte for byte ``Event.SerializeToString()`` (tags
    of 1 and 2-byte lengths, zero and 9-byte steps, float32 rounding, non-finite values)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    expected = Event(
        wall_time=1796659595.2164218,
        step=step,
        summary=Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in row.items()]),
    ).SerializeToString()
    prefixes: dict[str, bytes] = {}
    assert scalar_event(row, step, 1796659595.2164218, prefixes) == expected
    assert scalar_event(row, step, 1796659595.2164218, prefixes) == expected  # cached tags


def test_a_value_beyond_float32_is_infinite_as_summary_writer_makes_it(context):
    """1e39 does not fit a float32: TensorBoard gets infinity, and the row's other values."""
    sink = TensorBoardSink(context)
    sink.log_metrics({"huge": 1e39, "small": 2.0, "int": 10**40}, 3)
    sink.close()
    scalars = read_scalars(context.tensorboard_dir)
    assert scalars["huge"] == [(3, math.inf)] and scalars["int"] == [(3, math.inf)]
    assert scalars["small"] == [(3, 2.0)]


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
    """The config is a text table; hparams declare the experiment (algo, env, seed, every
    algorithm's hyperparameters; the metrics to compare) and this run's session."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import metadata as hp_metadata

    from rl_training import TrainConfig

    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=3, total_timesteps=64,
                         output_dir="x|y", hyperparams={"n_steps": 32})  # fmt: skip
    sink = TensorBoardSink(context)
    sink.log_config(normalize_config(config))
    sink.log_metrics({"episode/return": 9.0}, 0)
    sink.close(status="interrupted")
    assert [p for p in context.tensorboard_dir.iterdir() if p.is_dir()] == []
    main, ended = event_files(context.tensorboard_dir)  # the run's file, how it ended
    assert ended.name.endswith(".session-end") and not main.name.endswith(".session-end")

    accumulator = load_events(context.tensorboard_dir)
    (text_event,) = accumulator.Tensors("config/text_summary")
    table = text_event.tensor_proto.string_val[0].decode()
    assert "| algo | ppo |" in table and "| hyperparams.n_steps | 32 |" in table
    assert "x\\|y" in table

    content = accumulator.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    names = [info.name for info in experiment.hparam_infos]
    assert names[:3] == ["algo", "env_id", "seed"]
    assert {"hyperparams.n_steps", "hyperparams.buffer_size", "hyperparams.policy_delay"} <= set(
        names
    )  # every algorithm's, so one declaration covers every run of the directory
    assert not {"output_dir", "log_sinks", "device", "total_timesteps"} & set(names)
    differs = {info.name for info in experiment.hparam_infos if info.differs}  # listed first
    assert differs == {"algo", "env_id", "seed", "hyperparams.learning_rate", "hyperparams.n_steps"}
    assert [m.name.tag for m in experiment.metric_infos] == [
        "episode/return_mean", "eval/mean_return"
    ]  # fmt: skip
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["algo"].string_value == "ppo"
    assert start.hparams["seed"].number_value == 3
    assert start.hparams["hyperparams.n_steps"].number_value == 32
    assert start.hparams["hyperparams.anneal_lr"].bool_value is True
    assert start.hparams["hyperparams.net_arch"].string_value == "[64, 64]"
    assert "output_dir" not in start.hparams
    end = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.session_end_info.status == api_pb2.Status.Value("STATUS_UNKNOWN")


def test_other_configs_give_their_own_hparams(context):
    """A create_run config's scalar entries are its hyperparameters."""
    from tensorboard.plugins.hparams import metadata as hp_metadata

    sink = TensorBoardSink(context)
    sink.log_config({"lr": 0.1, "net": {"layers": [64, 64]}, "note": "x"})
    sink.close()
    content = load_events(context.tensorboard_dir).PluginTagToContent(hp_metadata.PLUGIN_NAME)
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG]
    )
    assert dict(start.hparams)["lr"].number_value == 0.1
    assert start.hparams["net.layers"].string_value == "[64, 64]"


def test_flatten_joins_nested_keys():
    """Nested mappings become dotted keys; lists and empty mappings stay values."""
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1], "e": {}}


def _session_status(context) -> str:
    """The HParams session status TensorBoard's reader takes from the run's files."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import metadata as hp_metadata

    content = load_events(context.tensorboard_dir).PluginTagToContent(hp_metadata.PLUGIN_NAME)
    end = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.SESSION_END_INFO_TAG])
    return api_pb2.Status.Name(end.session_end_info.status)


def _attempt(context, resume_step, steps, offset=0.0, status="interrupted"):
    """One attempt of a run: a sink (resumed at ``resume_step``) logging ``x`` at ``steps``."""
    sink = TensorBoardSink(dataclasses.replace(context, resume_step=resume_step))
    sink.log_config({"algo": "ppo"})
    for step in steps:
        sink.log_metrics({"x": step + offset}, step)
    sink.close(status)


def test_a_fresh_file_starts_its_session_at_step_0(context):
    """A new run's file opens with SessionLog.START, so its first resume counts as a restart."""
    from tensorboard.compat.proto.event_pb2 import SessionLog

    sink = TensorBoardSink(context)
    sink.close()
    version, start, *_ = _records(context)
    assert version.file_version == "brain.Event:2"
    assert (start.step, start.session_log.status) == (0, SessionLog.START)


def test_kills_and_resumes_leave_one_curve_per_tag(context):
    """Each resume drops what earlier attempts logged after its step, as TensorBoard reads it."""
    _attempt(context, None, (0, 10, 20, 30))
    _attempt(context, 10, (20, 30, 40), offset=0.5)
    _attempt(context, 30, (40, 50), offset=0.25, status="finished")
    assert read_scalars(context.tensorboard_dir)["x"] == [
        (0, 0.0), (10, 10.0), (20, 20.5), (30, 30.5), (40, 40.25), (50, 50.25)
    ]  # fmt: skip


def test_a_run_written_before_fresh_session_starts_resumes_to_one_curve(context):
    """A run whose file has no START (earlier versions wrote none) still resumes to one curve."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    old = EventFileWriter(context.tensorboard_dir)  # as earlier versions wrote a fresh run
    for step in (0, 10, 20, 30):
        value = Summary.Value(tag="x", simple_value=float(step))
        old.write(Event(step=step, wall_time=time.time(), summary=Summary(value=[value])))
    old.close()
    _attempt(context, 10, (20, 30), offset=0.5, status="finished")
    assert read_scalars(context.tensorboard_dir)["x"] == [(0, 0.0), (10, 10.0), (20, 20.5),
                                                          (30, 30.5)]  # fmt: skip


def test_a_resumed_run_that_finishes_shows_success_in_hparams(context):
    """The HParams status is the last attempt's: interrupted, then success after a resume."""
    _attempt(context, None, (0, 10))
    assert _session_status(context) == "STATUS_UNKNOWN"  # the hparams enum has no "interrupted"
    _attempt(context, 10, (20,), status="failed")
    assert _session_status(context) == "STATUS_FAILURE"
    _attempt(context, 20, (30,), status="finished")
    assert _session_status(context) == "STATUS_SUCCESS"
    ended = [p for p in event_files(context.tensorboard_dir) if p.suffix == ".session-end"]
    assert len(ended) == 1


def test_a_deleted_tensorboard_directory_does_not_block_a_resume(context):
    """A resume starts tensorboard/ again if it was deleted; the new points are all there."""
    _attempt(context, None, (0, 10))
    shutil.rmtree(context.tensorboard_dir)
    _attempt(context, 10, (20, 30), status="finished")
    assert read_scalars(context.tensorboard_dir)["x"] == [(20, 20.0), (30, 30.0)]
