"""The contract end to end: what a run writes, read back the way users read it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import rl_training
from rl_training.testing import decode_json_number, read_jsonl, read_scalars


def test_public_names_are_where_the_contract_says():
    """Every name of CONTRACT.md imports from its documented module."""
    from rl_training.config import TrainConfig
    from rl_training.experiment.logging import CompositeLogger, Logger, ScalarLike, Sink  # noqa: F401
    from rl_training.runtime.run_utils import (  # noqa: F401
        RunContext,
        TrainingRun,
        create_run_context,
        create_training_run,
    )

    assert rl_training.TrainConfig is TrainConfig
    assert rl_training.hookimpl.project_name == "rl_training"


def test_create_training_run_emits_tensorboard_event_file(tiny_config):
    """Metrics logged through the run land in one TensorBoard event file in tensorboard_dir
    (beside it only the file saying how the session ended; no subdirectory)."""
    config = tiny_config(log_sinks=("json", "tensorboard"))
    with rl_training.create_training_run(config) as run:
        for step in range(3):
            run.logger.log_metrics({"loss/policy": 0.5 * step, "episode/return": 10.0 + step}, step)
    files = sorted(run.run_context.tensorboard_dir.iterdir())
    assert all(p.is_file() and p.name.startswith("events.out.tfevents.") for p in files)
    events = [p for p in files if not p.name.endswith(".session-end")]
    assert len(events) == 1 and len(files) == 2
    scalars = read_scalars(run.run_context.tensorboard_dir)
    assert scalars["loss/policy"] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert scalars["episode/return"] == [(0, 10.0), (1, 11.0), (2, 12.0)]


def test_tensorboard_holds_every_point_the_jsonl_holds(tiny_config):
    """Both built-in sinks receive the same rows, non-finite values included."""
    config = tiny_config(log_sinks=("json", "tensorboard"))
    values = [0.25, math.nan, math.inf, -math.inf, -3.0, 1e30]
    with rl_training.create_training_run(config) as run:
        for step, value in enumerate(values):
            run.logger.log_metrics(
                {"m/value": value, "m/flag": step % 2 == 0, "m/count": step}, step * 10
            )
    rows = read_jsonl(run.run_context.metrics_path)
    scalars = read_scalars(run.run_context.tensorboard_dir)
    for key in ("m/value", "m/flag", "m/count"):
        from_json = [(r["step"], float(decode_json_number(r[key]))) for r in rows]
        from_tb = scalars[key]
        assert [s for s, _ in from_tb] == [s for s, _ in from_json]
        for (_, a), (_, b) in zip(from_json, from_tb, strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


WRITER = textwrap.dedent(
    """
    import sys
    from rl_training import TrainConfig, create_training_run

    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=1,
                         output_dir=sys.argv[1], log_sinks=("json", "tensorboard"),
                         hyperparams={"n_steps": 64})
    run = create_training_run(config)
    print(run.run_dir, flush=True)
    step = 0
    while True:
        width = 20 if step % 2 == 0 else 6  # rows of about 3.3 kB and 1 kB: many pages
        run.logger.log_metrics({f"k{i}/" + "x" * 150: float(step + i) for i in range(width)}, step)
        step += 1
    """
)


def test_killed_process_leaves_only_whole_lines(tmp_path):
    """A process killed (SIGKILL) mid-logging leaves whole strict-JSON lines and config.json.

    The rows (3.3 and 1 kB) fit in a page each: a row longer than a page can be cut by
    the kernel when the kill lands between its pages (resume drops such a last line).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "runs")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        run_dir = proc.stdout.readline().strip()
        metrics = f"{run_dir}/metrics.jsonl"
        deadline = time.monotonic() + 60
        while not (os.path.exists(metrics) and os.path.getsize(metrics) > 200_000):
            if time.monotonic() > deadline:
                pytest.fail("the writer did not get going within 60 s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    rows = read_jsonl(metrics)
    assert len(rows) > 10
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert [len(r) for r in rows] == [22 if r["step"] % 2 == 0 else 8 for r in rows]
    config = json.loads(Path(run_dir, "config.json").read_text())
    assert config["hyperparams"] == {"n_steps": 64}
    run_info = json.loads(Path(run_dir, "run.json").read_text())
    assert run_info["status"] == "running"  # nobody closed it: it says so honestly
