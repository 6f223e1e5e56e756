"""Run setup: run directories, create_training_run, run.json, cleanup on failure."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from rl_training.runtime.run_utils import (
    SinkCreationError,
    create_run_context,
    create_training_run,
)
from rl_training.testing import RECORDING_SINK_PLUGIN, read_jsonl


def test_create_run_context_exposes_tensorboard_directory(tiny_config):
    """The context's tensorboard_dir is run_dir / 'tensorboard' and exists."""
    config = tiny_config()
    context = create_run_context(config)
    assert context.run_dir.parent == Path(config.output_dir)
    assert context.run_dir.is_dir()
    assert context.tensorboard_dir == context.run_dir / "tensorboard"
    assert context.tensorboard_dir.is_dir()
    assert context.metrics_path == context.run_dir / "metrics.jsonl"
    assert context.config_path == context.run_dir / "config.json"


def test_run_directory_name_is_readable(tiny_config):
    """The name holds algorithm, env id, seed, UTC time and suffix."""
    before = datetime.now(timezone.utc).replace(microsecond=0)
    context = create_run_context(tiny_config(seed=7), run_suffix="trial-1")
    after = datetime.now(timezone.utc)
    name = context.run_dir.name
    assert name.startswith("ppo-CartPole-v1-s7-")
    assert name.endswith("-trial-1")
    stamp = datetime.strptime(name.split("-")[4], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert before <= stamp <= after  # holds across midnight, unlike comparing dates


def test_same_instant_calls_get_different_directories(tiny_config):
    """Repeated calls with one config and suffix never share a directory."""
    config = tiny_config()
    dirs = {create_run_context(config, run_suffix="x").run_dir for _ in range(20)}
    assert len(dirs) == 20


def test_existing_directory_is_never_reused(tiny_config):
    """A file already in a same-named directory is left untouched."""
    config = tiny_config()
    first = create_run_context(config)
    (first.run_dir / "keep.txt").write_text("mine")
    second = create_run_context(config)
    assert second.run_dir != first.run_dir
    assert (first.run_dir / "keep.txt").read_text() == "mine"


def _make_runs(output_dir, count, queue):
    from rl_training.testing import tiny_config

    config = tiny_config(output_dir=output_dir)
    queue.put([str(create_run_context(config, run_suffix="race").run_dir) for _ in range(count)])


def test_concurrent_processes_get_distinct_directories(tmp_path):
    """Four processes creating runs at the same instant never share a directory."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_make_runs, args=(tmp_path, 10, queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    dirs = [d for batch in results for d in batch]
    assert len(dirs) == len(set(dirs)) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(d).name for d in dirs)


def test_unsafe_suffix_is_rejected(tiny_config):
    """A suffix with a path separator raises ValueError naming it, making nothing."""
    config = tiny_config()
    with pytest.raises(ValueError, match="'../evil'"):
        create_run_context(config, run_suffix="../evil")
    assert not Path(config.output_dir).exists()


def test_create_training_run_logs_config_once_and_metrics(tiny_config):
    """config.json holds the config; metrics.jsonl every call."""
    config = tiny_config(hyperparams={"n_steps": 32})
    with create_training_run(config) as run:
        run.logger.log_metrics({"m": 1.0}, 0)
    saved = json.loads(run.run_context.config_path.read_text())
    assert saved["algo"] == "ppo" and saved["hyperparams"] == {"n_steps": 32}
    assert saved["output_dir"] == str(config.output_dir)
    rows = read_jsonl(run.run_context.metrics_path)
    assert [(r["step"], r["m"]) for r in rows] == [(0, 1.0)]


def test_run_json_records_the_run(tiny_config):
    """run.json says 'running' while open, then the status, times, command and versions."""
    run = create_training_run(tiny_config())
    info = json.loads(run.run_context.run_info_path.read_text())
    assert info["status"] == "running" and info["end_time"] is None
    assert info["name"] == run.run_dir.name
    assert info["command"] == sys.argv
    assert set(info["versions"]) >= {"python", "torch", "gymnasium", "rl-training"}
    assert all(info["versions"].values())
    run.close()
    info = json.loads(run.run_context.run_info_path.read_text())
    assert info["status"] == "finished"
    assert info["start_time"] <= info["end_time"]
    assert info["end_time"].endswith("+00:00")


@pytest.mark.parametrize(
    ("exception", "status"), [(ZeroDivisionError, "failed"), (KeyboardInterrupt, "interrupted")]
)
def test_context_manager_records_how_the_run_ended(tiny_config, exception, status):
    """Leaving by an error closes 'failed'; by KeyboardInterrupt, 'interrupted'."""
    with pytest.raises(exception), create_training_run(tiny_config()) as run:
        run.logger.log_metrics({"m": 1.0}, 0)
        raise exception
    assert json.loads(run.run_context.run_info_path.read_text())["status"] == status
    assert run.logger.closed
    assert read_jsonl(run.run_context.metrics_path)[0]["m"] == 1.0


def test_close_twice_is_harmless(tiny_config):
    """A second close() keeps the first status."""
    run = create_training_run(tiny_config())
    run.close("interrupted")
    run.close("finished")
    assert json.loads(run.run_context.run_info_path.read_text())["status"] == "interrupted"


def test_close_rejects_unknown_status(tiny_config):
    """close('done') raises ValueError listing the statuses, and the run stays open."""
    run = create_training_run(tiny_config())
    with pytest.raises(ValueError, match="'done'.*'finished'"):
        run.close("done")
    run.logger.log_metrics({"m": 1.0}, 0)
    run.close()


def test_unknown_sink_names_it_lists_available_and_leaves_nothing(tiny_config):
    """An unknown sink raises ValueError naming it and the available sinks; nothing is created."""
    config = tiny_config(log_sinks=("json", "nosuch"))
    with pytest.raises(ValueError) as info:
        create_training_run(config)
    assert "'nosuch'" in str(info.value)
    assert "json" in str(info.value) and "tensorboard" in str(info.value)
    assert not Path(config.output_dir).exists()


def test_unknown_sink_leaves_existing_output_dir_untouched(tiny_config):
    """With output_dir already there, nothing is added to it."""
    config = tiny_config(log_sinks=("nosuch",))
    Path(config.output_dir).mkdir()
    with pytest.raises(ValueError):
        create_training_run(config)
    assert list(Path(config.output_dir).iterdir()) == []


def test_cuda_without_cuda_is_a_clear_error_before_disk(tiny_config):
    """device='cuda' on a machine without CUDA raises ValueError naming it; nothing is created."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = tiny_config(device="cuda:0")
    with pytest.raises(ValueError, match="'cuda:0'.*not available"):
        create_training_run(config)
    assert not Path(config.output_dir).exists()


def test_unknown_env_id_is_a_clear_error_before_disk(tiny_config):
    """An env id gymnasium does not know raises ValueError naming it; nothing is created."""
    config = tiny_config(env_id="NoSuchEnv-v9")
    with pytest.raises(ValueError, match="'NoSuchEnv-v9'"):
        create_training_run(config)
    assert not Path(config.output_dir).exists()


def test_algorithm_that_does_not_fit_the_action_space(tiny_config):
    """DQN on a Box action space raises ValueError naming the algorithm and the space."""
    config = tiny_config(algo="dqn", env_id="Pendulum-v1", hyperparams={})
    with pytest.raises(ValueError, match=r"'dqn'.*'Pendulum-v1'.*Box"):
        create_training_run(config)
    assert not Path(config.output_dir).exists()


def test_failing_sink_factory_names_the_sink_and_leaves_nothing(tiny_config, install_plugin):
    """A factory that raises fails creation with an error naming the sink; no directory remains."""
    install_plugin(
        "rl-training-exploding",
        """
        import rl_training

        def explode(run_context):
            raise OSError("cannot open the store")

        @rl_training.hookimpl
        def rl_training_log_sinks():
            return {"exploding": explode}
        """,
    )
    config = tiny_config(log_sinks=("json", "tensorboard", "exploding"))
    with pytest.raises(SinkCreationError, match=r"'exploding'.*cannot open the store"):
        create_training_run(config)
    assert not Path(config.output_dir).exists()


def test_plugin_sink_receives_status_on_close(tiny_config, install_plugin):
    """A third-party sink from an entry point gets config, metrics and the closing status."""
    install_plugin("rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording")
    with (
        pytest.raises(KeyboardInterrupt),
        create_training_run(tiny_config(log_sinks=("recording",))) as run,
    ):
        run.logger.log_metrics({"b": 2, "a": 1.5}, 4)
        raise KeyboardInterrupt
    lines = (run.run_dir / "recording.txt").read_text().splitlines()
    assert lines[0].startswith("config ['algo', 'checkpoint_every', 'device'")
    assert lines[1:] == ["metrics 4 [('a', 1.5), ('b', 2)]", "close interrupted"]


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_strict_run_raises_sink_errors(tiny_config, install_plugin, delivery):
    """create_training_run(strict=True) re-raises a sink's error instead of dropping it: an
    inline sink's from the call, a background sink's from a later call or the close."""
    install_plugin(
        f"rl-training-flaky-{delivery}",
        f"""
        import rl_training

        class Flaky:
            delivery = {delivery!r}
            def __init__(self, run_context):
                pass
            def log_config(self, config):
                pass
            def log_metrics(self, metrics, step):
                raise RuntimeError("flaky store")
            def close(self):
                pass

        @rl_training.hookimpl
        def rl_training_log_sinks():
            return {{"flaky_{delivery}": Flaky}}
        """,
    )
    run = create_training_run(tiny_config(log_sinks=("json", f"flaky_{delivery}")), strict=True)
    with pytest.raises(RuntimeError, match="flaky store"):
        with run:
            run.logger.log_metrics({"m": 1.0}, 0)
            if delivery == "background":
                run.close()  # the error surfaces at the latest when the sink is closed
    assert read_jsonl(run.run_context.metrics_path)[0]["m"] == 1.0


def test_run_directory_is_what_tensorboard_logdir_shows(tiny_config):
    """Two runs under one output_dir are two TensorBoard runs, with no stray subdirectories."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    config = tiny_config(log_sinks=("json", "tensorboard"))
    for _ in range(2):
        with create_training_run(config) as run:
            run.logger.log_metrics({"m": 1.0}, 0)
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(config.output_dir))
    multiplexer.Reload()
    runs = sorted(multiplexer.Runs())
    assert len(runs) == 2
    assert all(r.endswith(os.sep + "tensorboard") for r in runs)
