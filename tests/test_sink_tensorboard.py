"""The tensorboard sink: one event per call, config as text and hparams in the run's own file."""

from __future__ import annotations

import math

import pytest

from rl_training.experiment.logging import normalize_config
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
    assert len(event_files(context.tensorboard_dir)) == 1

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
