"""Checkpoints and resume in place: real processes, real signals, read back from disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from rl_training import TrainConfig, resume, train
from rl_training.testing import assert_sinks_agree, read_jsonl, without_wall_clock
from rl_training.trainers.checkpoint import load_checkpoint

RL_TRAIN = [sys.executable, "-m", "rl_training"]
PPO_TINY = [arg for hp in ("num_envs=2", "n_steps=32", "batch_size=32", "n_epochs=2")
            for arg in ("--hp", hp)]  # fmt: skip
TINY = {
    "ppo": {"num_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 2},
    "a2c": {"num_envs": 4, "n_steps": 5, "log_interval": 100},
    "dqn": {"net_arch": [32, 32], "learning_starts": 50, "batch_size": 16, "train_freq": 4,
            "gradient_steps": 2, "target_update_interval": 20, "log_interval": 100},
    "sac": {"net_arch": [32, 32], "learning_starts": 50, "batch_size": 32, "log_interval": 100},
    "td3": {"net_arch": [32, 32], "learning_starts": 50, "batch_size": 32, "log_interval": 100},
}  # fmt: skip
ENV = {"ppo": "CartPole-v1", "a2c": "CartPole-v1", "dqn": "CartPole-v1",
       "sac": "Pendulum-v1", "td3": "Pendulum-v1"}  # fmt: skip


def config(tmp_path: Path, algo: str = "ppo", total: int = 256, **fields) -> TrainConfig:
    """A tiny CPU config of ``algo`` with both built-in sinks."""
    return TrainConfig(
        algo=algo, env_id=ENV[algo], seed=3, total_timesteps=total, output_dir=tmp_path / "runs",
        device="cpu", hyperparams=TINY[algo], **fields,
    )  # fmt: skip


def start_rl_train(out: Path, *extra: str) -> subprocess.Popen:
    """rl-train on a long PPO run in its own process group."""
    return subprocess.Popen(
        [*RL_TRAIN, "--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "10000000",
         "--output-dir", str(out), "--quiet", *PPO_TINY, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 90.0):
    """Poll ``predicate()`` until it returns something true; fail (and kill) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if proc.poll() is not None:
            pytest.fail(f"rl-train ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("timed out waiting for rl-train")


def checkpoint_with_rows_after(out: Path):
    """The run directory once it has a checkpoint and rows logged after its step."""
    runs = list(out.glob("*/checkpoint.pt")) if out.exists() else []
    if not runs:
        return None
    run_dir = runs[0].parent
    try:
        step = load_checkpoint(runs[0]).step
        last = read_jsonl(run_dir / "metrics.jsonl")[-1]["step"]
    except (ValueError, OSError, EOFError, RuntimeError):  # mid-write: try again
        return None
    return run_dir if last > step + 500 else None


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """rl-train to completion."""
    return subprocess.run([*RL_TRAIN, *args], capture_output=True, text=True, timeout=timeout)


def resumed_after(run_dir: Path) -> datetime:
    """When the (last) resume started, from run.json."""
    return datetime.fromisoformat(
        json.loads((run_dir / "run.json").read_text())["resumes"][-1]["time"]
    )


def test_sigkill_after_a_checkpoint_then_resume_keeps_one_history(tmp_path):
    """kill -9 mid-run, resume: every sink holds one history, nothing after S from the first try."""
    proc = start_rl_train(tmp_path / "runs", "--checkpoint-every", "1000")
    try:
        run_dir = wait_for(lambda: checkpoint_with_rows_after(tmp_path / "runs"), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    step = load_checkpoint(run_dir / "checkpoint.pt").step
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # killed

    done = run_cli("--resume", str(run_dir), "--total-timesteps", str(step + 640), "--quiet")
    assert done.returncode == 0, done.stderr
    assert str(run_dir) in done.stdout
    rows = assert_sinks_agree(run_dir)  # TensorBoard holds exactly the JSONL's points
    resumed = resumed_after(run_dir).timestamp()
    assert all(row["time"] >= resumed for row in rows if row["step"] > step)
    assert all(row["time"] < resumed for row in rows if row["step"] <= step)
    assert rows[-1]["step"] == step + 640
    updates = [row["train/n_updates"] for row in rows if "train/n_updates" in row]
    assert updates == list(range(1, len(updates) + 1))  # one update count, no repeat or gap
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and [r["step"] for r in info["resumes"]] == [step]


def test_sigterm_checkpoints_then_resume_finishes(tmp_path):
    """SIGTERM: exit 143 after a checkpoint at the last row; resume continues from there."""
    proc = start_rl_train(tmp_path / "runs", "--checkpoint-every", "0", "--log-sinks", "json")
    metrics = wait_for(lambda: next((tmp_path / "runs").glob("*/metrics.jsonl"), None), proc)
    wait_for(lambda: metrics.stat().st_size > 20_000, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    run_dir = metrics.parent
    assert "Traceback" not in stderr and str(run_dir) in stdout
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    step = load_checkpoint(run_dir / "checkpoint.pt").step
    rows = read_jsonl(metrics)
    assert step == rows[-1]["step"] == max(r["step"] for r in rows if "loss/policy" in r)
    assert not list(run_dir.glob(".*.tmp"))

    result = resume(run_dir, total_timesteps=step + 128)
    assert result.steps == step + 128 and result.run_dir == run_dir
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_resuming_one_checkpoint_twice_gives_the_same_rows(tmp_path):
    """Two resumes of copies of one run directory log identical rows (wall clock aside)."""
    first = train(config(tmp_path, total=192))
    copies = [tmp_path / "a" / first.run_dir.name, tmp_path / "b" / first.run_dir.name]
    for copy in copies:
        shutil.copytree(first.run_dir, copy)
        resume(copy, total_timesteps=448)
    a, b = (without_wall_clock(read_jsonl(c / "metrics.jsonl")) for c in copies)
    assert a == b and a[-1]["step"] == 448
    models = [torch.load(c / "model.pt", weights_only=True)["state_dicts"]["agent"] for c in copies]
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


@pytest.mark.parametrize("algo", list(TINY))
def test_every_trainer_resumes_a_finished_run_with_a_larger_budget(tmp_path, algo):
    """Each algorithm continues from its checkpoint: steps, update counts and sinks agree."""
    first = train(config(tmp_path, algo, total=200))
    before = read_jsonl(first.run_dir / "metrics.jsonl")
    result = resume(first.run_dir, total_timesteps=400)
    assert result.steps == 400
    rows = assert_sinks_agree(first.run_dir)
    assert rows[: len(before)] == before  # the first attempt's rows are kept as they were
    updates = [row["train/n_updates"] for row in rows if "train/n_updates" in row]
    assert updates == sorted(updates) and updates[-1] > updates[len(updates) // 2 - 1]
    assert load_checkpoint(first.run_dir / "checkpoint.pt").step == 400


def test_checkpoints_are_written_on_the_interval_and_load_weights_only(tmp_path):
    """checkpoint_every=64 writes one every 64 steps; the file loads with weights_only=True."""
    steps_seen = []

    def watch(metrics, step):
        path = tmp_path / "runs"
        for found in path.glob("*/checkpoint.pt"):
            steps_seen.append(load_checkpoint(found).step)

    result = train(config(tmp_path, total=256, checkpoint_every=64), progress=watch)
    assert sorted(set(steps_seen)) == [64, 128, 192]  # each seen by the next rows...
    payload = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 256 and payload["config"]["algo"] == "ppo"  # ...and the last
    assert set(payload["trainer"]) == {"session", "agent", "optimizer", "n_updates"}
    assert config(tmp_path).checkpoint_interval == 25  # None: a tenth of the budget
    assert config(tmp_path, checkpoint_every=0).checkpoint_interval == 0


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes under ``run_dir``."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_resume_refusals_are_one_line_and_change_nothing(tmp_path):
    """No checkpoint, finished without a larger budget, a budget below S, a run in use."""
    done = train(config(tmp_path, total=128))
    before = snapshot(done.run_dir)
    cases = [
        (["--resume", str(tmp_path)], "no checkpoint"),
        (["--resume", str(done.run_dir)], "already finished at step 128"),
        (["--resume", str(done.run_dir), "--total-timesteps", "64"], "must be above"),
        (["--resume", str(done.run_dir), "--algo", "dqn"], "--algo cannot change"),
    ]
    for args, fragment in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert fragment in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(done.run_dir / ".lock")], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli("--resume", str(done.run_dir), "--total-timesteps", "256")
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert result.returncode == 2 and "in use by a live process" in result.stderr, result.stderr
    assert snapshot(done.run_dir) == before
