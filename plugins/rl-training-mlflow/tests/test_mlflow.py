"""What the mlflow sink stores, read back through MlflowClient."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from rl_training import create_training_run
from rl_training.testing import tiny_config


def only_run(client):
    (experiment,) = [e for e in client.search_experiments() if e.name == "rl-training"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


@pytest.fixture(autouse=True)
def _local_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no test talks to the network
    monkeypatch.setenv("DO_NOT_TRACK", "1")


def test_params_metrics_and_status_in_the_output_directory_store(tmp_path):
    """Config as flattened params, every metric with its step, the run FINISHED."""
    config = tiny_config(output_dir=tmp_path, log_sinks=("mlflow",), hyperparams={"n_steps": 16})
    with create_training_run(config) as run:
        for step in range(5):
            run.logger.log_metrics(
                {"loss/value": 1.0 / (step + 1), "episode/return": step}, step * 10
            )
        run.logger.log_metrics({"odd": math.nan}, 60)
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir.parent / 'mlflow.db'}")
    stored = only_run(client)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == run.run_dir.name
    assert stored.data.params["algo"] == "ppo"
    assert stored.data.params["hyperparams.n_steps"] == "16"
    assert stored.data.params["resolved_hyperparams.net_arch"] == "[64, 64]"
    history = client.get_metric_history(stored.info.run_id, "loss/value")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s * 10, pytest.approx(1.0 / (s + 1))) for s in range(5)
    ]
    assert math.isnan(client.get_metric_history(stored.info.run_id, "odd")[0].value)


@pytest.mark.parametrize(
    ("exception", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_run_ends_failed_or_killed(tmp_path, exception, status):
    """A run that fails ends FAILED; an interrupted one KILLED; what was logged is kept."""
    config = tiny_config(output_dir=tmp_path, log_sinks=("mlflow",))
    with pytest.raises(exception), create_training_run(config) as run:
        run.logger.log_metrics({"m": 1.0}, 1)
        raise exception
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir.parent / 'mlflow.db'}")
    stored = only_run(client)
    assert stored.info.status == status
    assert [m.value for m in client.get_metric_history(stored.info.run_id, "m")] == [1.0]


def test_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI puts every run in one shared store, in the named experiment."""
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cartpole-sweep")
    for seed in (0, 1):
        with create_training_run(
            tiny_config(output_dir=tmp_path / "runs", seed=seed, log_sinks=("mlflow",))
        ) as run:
            run.logger.log_metrics({"m": float(seed)}, 0)
        assert not (run.run_dir / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("cartpole-sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]


def test_long_param_values_are_cut(tmp_path):
    """A config value longer than MLflow's limit is stored cut, not rejected."""
    from rl_training_mlflow import MAX_PARAM_LENGTH

    config = tiny_config(output_dir=tmp_path, log_sinks=("mlflow",))
    with create_training_run(config) as run:
        run.logger.log_config({"note": "x" * (MAX_PARAM_LENGTH + 50)})
    stored = only_run(MlflowClient(tracking_uri=f"sqlite:///{run.run_dir.parent / 'mlflow.db'}"))
    assert len(stored.data.params["note"]) == MAX_PARAM_LENGTH
    assert stored.data.params["note"].endswith("...")


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path):
    """rl_training.resume continues the MLflow run of the first attempt, tagged with S."""
    from rl_training import resume, train

    config = tiny_config(
        output_dir=tmp_path, log_sinks=("mlflow",), total_timesteps=128,
        hyperparams={"num_envs": 2, "n_steps": 16, "batch_size": 32, "n_epochs": 1},
    )  # fmt: skip
    first = train(config)
    resume(first.run_dir, total_timesteps=256)
    client = MlflowClient(tracking_uri=f"sqlite:///{first.run_dir.parent / 'mlflow.db'}")
    stored = only_run(client)  # one run, not two
    assert stored.info.status == "FINISHED"
    assert stored.data.tags["rl_training.resume_step"] == "128"
    assert stored.data.params["total_timesteps"] == "128"  # params cannot change...
    assert stored.data.tags["config.total_timesteps"] == "256"  # ...the new budget is a tag
    steps = [m.step for m in client.get_metric_history(stored.info.run_id, "train/n_updates")]
    assert max(steps) == 256 and 128 in steps


@pytest.mark.parametrize("landed", [True, False], ids=["batch-landed", "batch-not-sent"])
def test_a_resume_sends_what_the_store_lacks_each_point_once(tmp_path, landed):
    """A store takes a batch's metrics and its ``delivered_step`` tag in two transactions:
    an attempt killed between them leaves points stored past the tag. The resume sends
    the rows of metrics.jsonl up to S that the store lacks, and none it has (NaN, inf and
    two equal points at one step included)."""
    import dataclasses
    import time

    from rl_training_mlflow import DELIVERED_TAG

    from rl_training import CompositeLogger, available_sinks
    from rl_training.runtime.context import RunContext

    context = RunContext(config=tiny_config(output_dir=tmp_path), run_dir=tmp_path / "run")
    context.run_dir.mkdir()
    sinks = {name: available_sinks()[name].factory(context) for name in ("json", "mlflow")}
    rows = [({"r": float(s), "x": [math.nan, math.inf, -math.inf][s % 3]}, s) for s in range(10)]
    rows.insert(6, ({"r": 5.0}, 5))  # a second env's equal episode at step 5
    for metrics, step in rows:
        sinks["json"].log_metrics(metrics, step)
    time.sleep(0.05)  # the mlflow sink runs behind, on its delivery thread: later stamps
    for metrics, step in rows:
        if landed or step <= 4:
            sinks["mlflow"].log_metrics(metrics, step)
    CompositeLogger(sinks).close("interrupted")
    client = sinks["mlflow"].client
    run_id = sinks["mlflow"].run_id
    client.update_run(run_id, status="RUNNING")  # as a killed attempt leaves it
    client.set_tag(run_id, DELIVERED_TAG, "4")  # the batch of steps 5-9 without its tag
    resumed = available_sinks()["mlflow"].factory(dataclasses.replace(context, resume_step=8))
    CompositeLogger({"mlflow": resumed}).close("finished")

    def history(key):
        return sorted((m.step, repr(m.value)) for m in client.get_metric_history(run_id, key))

    top = repr(1.7976931348623157e308)
    assert history("r") == [(s, repr(float(s))) for s in range(10 if landed else 9)]
    assert history("x") == [(s, ["nan", top, "-" + top][s % 3]) for s in range(10 if landed else 9)]


def test_relative_output_directory_and_two_runs_in_one_store(tmp_path, monkeypatch, capfd):
    """The README's command: a relative output dir; both runs land in runs/mlflow.db,
    quietly, each with its model as an artifact."""
    from rl_training import train

    monkeypatch.chdir(tmp_path)
    hp = {"num_envs": 2, "n_steps": 16, "batch_size": 32, "n_epochs": 1}
    results = [
        train(tiny_config(output_dir="runs", seed=seed, log_sinks=("json", "mlflow"),
                          total_timesteps=64, hyperparams=hp))
        for seed in (0, 1)
    ]  # fmt: skip
    assert "Creating initial MLflow database tables" not in capfd.readouterr().err
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "rl-training"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(r.run_dir.name for r in results)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.pt"]


def test_keys_mlflow_refuses_are_renamed_and_nothing_is_lost(tmp_path):
    """A key with a comma, a newline or over 250 characters is renamed with one warning;
    every value of the batch is stored."""
    from rl_training_mlflow import MlflowKeyWarning, mlflow_key

    bad = {"a,b": 1.0, "line\nbreak": 2.0, "k" * 300: 3.0, "ok/key": 4.0}
    config = tiny_config(output_dir=tmp_path, log_sinks=("mlflow",))
    with pytest.warns(MlflowKeyWarning) as warned, create_training_run(config) as run:
        run.logger.log_metrics(bad, 1)
        run.logger.log_metrics(bad, 2)  # warned once per key, not per row
    assert len(warned) == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir.parent / 'mlflow.db'}")
    stored = only_run(client)
    assert stored.info.status == "FINISHED"
    for key, value in bad.items():
        history = client.get_metric_history(stored.info.run_id, mlflow_key(key))
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (1, value), (2, value)
        ]  # fmt: skip
    assert mlflow_key("a,b") == "a_b" and len(mlflow_key("k" * 300)) == 250
    assert mlflow_key("../x//y") == "_/x/_/y"


CONCURRENT_RUN = """
import sys
from rl_training import train
from rl_training.testing import tiny_config

train(tiny_config(output_dir=sys.argv[1], seed=int(sys.argv[2]), log_sinks=("mlflow",),
                  total_timesteps=64, hyperparams={"n_steps": 16}))
"""


def test_runs_started_at_once_share_a_new_store(tmp_path):
    """Three processes creating the store at the same moment all end FINISHED in it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN, str(tmp_path / "runs"), str(seed)],
                         stderr=subprocess.PIPE, text=True, env=env)
        for seed in range(3)
    ]  # fmt: skip
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert "Creating initial MLflow database tables" not in stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "rl-training"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize("store", ["local", "server"])
def test_a_kill_and_a_resume_keep_the_whole_history_up_to_the_checkpoint(tmp_path, request, store):
    """kill -9 (queued values never sent), then --resume: every row of metrics.jsonl up to
    the checkpoint's step S is in the MLflow history, each once; the run ends FINISHED —
    in the output directory's store and on a real ``mlflow server``."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from rl_training.testing import read_jsonl
    from rl_training.trainers.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    uri = f"sqlite:///{out / 'mlflow.db'}"
    if store == "server":
        uri = env["MLFLOW_TRACKING_URI"] = request.getfixturevalue("server").uri
    command = [sys.executable, "-m", "rl_training", "--algo", "ppo", "--env-id", "CartPole-v1",
               "--output-dir", str(out), "--quiet", "--log-sinks", "json,mlflow",
               "--hp", "num_envs=2", "--hp", "n_steps=32", "--hp", "batch_size=32"]  # fmt: skip
    proc = subprocess.Popen([*command, "--total-timesteps", "10000000", "--checkpoint-every",
                             "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)  # fmt: skip
    run_dir: Path | None = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run_dir is None:
            for checkpoint in out.glob("*/checkpoint.pt"):
                try:
                    step = load_checkpoint(checkpoint).step
                    last = read_jsonl(checkpoint.parent / "metrics.jsonl")[-1]["step"]
                except (ValueError, OSError, EOFError, RuntimeError):
                    continue
                if last > step + 500:
                    run_dir = checkpoint.parent
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert run_dir is not None, "no checkpoint with rows after it in 120 s"
    step = load_checkpoint(run_dir / "checkpoint.pt").step
    done = subprocess.run([*command[:3], "--resume", str(run_dir), "--total-timesteps",
                           str(step + 256), "--quiet"], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=uri)
    stored = only_run(client)
    assert stored.info.status == "FINISHED"
    history = client.get_metric_history(stored.info.run_id, "episode/return")
    # Each point once (MLflow itself keeps one of two equal points logged in one
    # millisecond: two envs ending equal episodes at one step).
    kept = sorted({(r["step"], r["episode/return"]) for r in read_jsonl(run_dir / "metrics.jsonl")
                   if "episode/return" in r and r["step"] <= step})  # fmt: skip
    assert kept and sorted((m.step, m.value) for m in history if m.step <= step) == kept
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_images_and_videos_are_artifacts(tmp_path):
    """An image goes through log_image (per step), a video is a GIF artifact under
    media/<key>/; histograms and text are left out with one warning each."""
    import numpy as np

    from rl_training import Histogram, Image, Video
    from rl_training.experiment.logging import SinkKindWarning

    config = tiny_config(output_dir=tmp_path, log_sinks=("mlflow",))
    with pytest.warns(SinkKindWarning, match="'mlflow' does not take histogram"):
        with create_training_run(config) as run:
            for step in (1, 2):
                run.logger.log_metrics({"loss": 1.0, "eval/frame": Image(np.zeros((4, 6, 3),
                                        np.uint8)), "eval/clip": Video(np.zeros((3, 4, 6, 3),
                                        np.uint8), fps=10), "w": Histogram(np.arange(3.0))},
                                       step)  # fmt: skip
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir.parent / 'mlflow.db'}")
    stored = only_run(client)
    top = {a.path for a in client.list_artifacts(stored.info.run_id)}
    assert {"images", "media"} <= top
    clips = [a.path for a in client.list_artifacts(stored.info.run_id, "media/eval/clip")]
    assert len(clips) == 2 and all(p.endswith(".gif") for p in clips)
    images = [a.path for a in client.list_artifacts(stored.info.run_id, "images")]
    assert len(images) >= 2 and any("eval" in p for p in images)
    assert [m.step for m in client.get_metric_history(stored.info.run_id, "loss")] == [1, 2]
