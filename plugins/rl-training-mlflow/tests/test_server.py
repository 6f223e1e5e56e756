"""The mlflow sink against a real ``mlflow server`` on 127.0.0.1 (SQLite backend, local
artifact root), started and killed by the tests, with real ``rl-train`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from rl_training.testing import killed_on_exit, read_jsonl, wait_for

ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
RL_TRAIN = [sys.executable, "-m", "rl_training", "--algo", "ppo", "--env-id", "CartPole-v1",
            "--quiet", "--log-sinks", "json,mlflow", "--hp", "num_envs=2", "--hp", "n_steps=32",
            "--hp", "batch_size=32", "--hp", "n_epochs=1"]  # fmt: skip
BATCH = '"POST /api/2.0/mlflow/runs/log-batch'
ONE_METRIC = '"POST /api/2.0/mlflow/runs/log-metric'


def stored_run(uri: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("rl-training")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float | str]]:
    """The points of ``key``, sorted, each once (MLflow keeps one of two equal points —
    same step, value and millisecond: two envs ending equal episodes at one step)."""
    return sorted({(m.step, _plain(m.value)) for m in client.get_metric_history(run_id, key)})


def _plain(value: float) -> float | str:
    """A value comparable with ``==`` (NaN as a string: NaN != NaN)."""
    return "nan" if value != value else value


def rows_by_key(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "time"):
                found.setdefault(key, []).append((row["step"], _plain(float(value))))
    return {key: sorted(set(points)) for key, points in found.items()}


def test_every_row_params_status_and_model_on_the_server_in_batches(server, tmp_path):
    """A whole rl-train run against the server: every metrics.jsonl value is in the MLflow
    history at its step, the config is params, the run FINISHED with its model; the
    values went in log-batch requests, never one request per metric."""
    out = tmp_path / "runs"
    done = subprocess.run([*RL_TRAIN, "--output-dir", str(out), "--total-timesteps", "3000"],
                          env={**ENV, "MLFLOW_TRACKING_URI": server.uri}, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_dir,) = out.iterdir()
    client, stored = stored_run(server.uri)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == run_dir.name
    assert stored.data.params["algo"] == "ppo"
    assert stored.data.params["hyperparams.n_steps"] == "32"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    expected = rows_by_key(rows)
    for key, points in expected.items():
        assert history(client, stored.info.run_id, key) == points, key
    assert [a.path for a in client.list_artifacts(stored.info.run_id)] == ["model.pt"]
    assert (server.root / "artifacts").is_dir()
    sinks = json.loads((run_dir / "run.json").read_text())["sinks"]
    assert sinks["mlflow"] == {"delivery": "background", "calls": len(rows) + 1, "dropped": 0,
                               "undelivered": 0, "error": None}  # fmt: skip
    batches = server.requests(BATCH)
    assert server.requests(ONE_METRIC) == 0
    assert 2 <= batches <= len(rows) / 10, (batches, len(rows))


def train_until_rows_arrive(server, out, total: int) -> subprocess.Popen:
    """``rl-train`` (json + mlflow on ``server``) in a process group of its own, once
    the server got the params and a first batch of rows (killed if that fails)."""
    proc = subprocess.Popen([*RL_TRAIN, "--output-dir", str(out), "--total-timesteps", str(total)],
                            env={**ENV, "MLFLOW_TRACKING_URI": server.uri},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    # The params, then a first batch of rows.
    wait_for(lambda: server.requests(BATCH) >= 2, proc, timeout=120)
    return proc


def test_server_killed_mid_run_the_run_ends_normally_and_counts_what_was_lost(server, tmp_path):
    """kill -9 the server once rows reached it: training goes on, the sink retries, the
    run exits 0 "finished", and run.json counts the rows the server never got — the
    rows of metrics.jsonl after the last step the server has."""
    out = tmp_path / "runs"
    with killed_on_exit(train_until_rows_arrive(server, out, 40000)) as proc:
        server.kill()
        killed_at = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert time.monotonic() - killed_at < 90
    (run_dir,) = out.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] == 40000  # training went on to the end
    # What the server has, read from its database now that it is gone.
    client, stored = stored_run(f"sqlite:///{server.root / 'mlflow.db'}")
    assert stored.info.status == "RUNNING"  # the end never reached it
    delivered = int(stored.data.tags["rl_training.delivered_step"])
    assert 0 <= delivered < 40000
    for key, points in rows_by_key([r for r in rows if r["step"] <= delivered]).items():
        assert set(points) <= set(history(client, stored.info.run_id, key)), key
    after = sum(r["step"] > delivered for r in rows)
    at = sum(r["step"] == delivered for r in rows)
    mlflow = info["sinks"]["mlflow"]
    assert after <= mlflow["undelivered"] <= after + at, (mlflow, after, at)
    assert mlflow["dropped"] == 0 and mlflow["error"] is None
    assert "did not take a send" in stderr and "were not delivered" in stderr
    assert (f"sink mlflow: {mlflow['calls']} calls, 0 dropped (queue full), "
            f"{mlflow['undelivered']} undelivered") in stdout  # fmt: skip


def test_server_back_after_an_outage_gets_every_row(server, tmp_path):
    """The server goes away for some seconds and comes back on the same port: the
    sink's retries deliver everything, nothing is counted lost."""
    out = tmp_path / "runs"
    # Long enough that the sink's backed-off retry (up to 8 s after a 6 s outage) comes
    # while the run still trains, on a loaded machine too.
    with killed_on_exit(train_until_rows_arrive(server, out, 200000)) as proc:
        server.kill()
        server.start()  # about 6 s away
        assert proc.poll() is None, "the run ended before the server was back"
        _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    (run_dir,) = out.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["sinks"]["mlflow"]["undelivered"] == 0, (info["sinks"], stderr)
    assert "did not take a send" in stderr and "is back" in stderr
    client, stored = stored_run(server.uri)
    assert stored.info.status == "FINISHED"
    for key, points in rows_by_key(read_jsonl(run_dir / "metrics.jsonl")).items():
        assert history(client, stored.info.run_id, key) == points, key


def test_mlflow_ui_opens_the_store_the_sink_wrote(tmp_path):
    """`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` (the README's command)
    lists the run the sink wrote there, FINISHED, with its metrics."""
    from check_ui import check_ui  # beside tests/, on the path through conftest.py

    out = tmp_path / "runs"
    done = subprocess.run([*RL_TRAIN, "--output-dir", str(out), "--total-timesteps", "512"],
                          env=ENV, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (listed,) = check_ui(out)
    assert listed["info"]["run_name"] == next(out.glob("ppo-*")).name
