"""Checkpoints and resume in place: real processes, real signals, read back from disk."""

from __future__ import annotations

import contextlib
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
from rl_training.testing import (
    TensorBoardServer,
    assert_sinks_agree,
    read_jsonl,
    read_scalars,
    wait_for,
    without_wall_clock,
)
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


def checkpoint_with_rows_after(out: Path, after: int = 0):
    """The run directory once it has a checkpoint past step ``after`` and rows logged
    after the checkpoint's step."""
    runs = list(out.glob("*/checkpoint.pt")) if out.exists() else []
    if not runs:
        return None
    run_dir = runs[0].parent
    try:
        step = load_checkpoint(runs[0]).step
        last = read_jsonl(run_dir / "metrics.jsonl")[-1]["step"]
    except (ValueError, OSError, EOFError, RuntimeError):  # mid-write: try again
        return None
    return run_dir if step > after and last > step + 500 else None


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
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], 0);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(done.run_dir)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli("--resume", str(done.run_dir), "--total-timesteps", "256")
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert result.returncode == 2 and "in use by a live process" in result.stderr, result.stderr
    assert snapshot(done.run_dir) == before


def _killed_after_a_checkpoint(proc: subprocess.Popen, out: Path, after: int) -> Path:
    """SIGKILL ``proc`` once its run has a checkpoint past ``after`` and rows beyond it."""
    try:
        run_dir = wait_for(lambda: checkpoint_with_rows_after(out, after), proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    return run_dir


@pytest.mark.parametrize("load_fast", [False, True], ids=["python-reader", "rust-data-server"])
def test_tensorboards_own_server_shows_one_curve_after_kills_and_resumes(tmp_path, load_fast):
    """Killed twice and resumed: TensorBoard's server shows JSONL's points once, status success."""
    out = tmp_path / "runs"
    run_dir = _killed_after_a_checkpoint(start_rl_train(out, "--checkpoint-every", "1000"), out, 0)
    first = load_checkpoint(run_dir / "checkpoint.pt").step
    again = subprocess.Popen(
        [*RL_TRAIN, "--resume", str(run_dir), "--quiet"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    _killed_after_a_checkpoint(again, out, first)
    second = load_checkpoint(run_dir / "checkpoint.pt").step
    done = run_cli("--resume", str(run_dir), "--total-timesteps", str(second + 640), "--quiet")
    assert done.returncode == 0, done.stderr

    rows = read_jsonl(run_dir / "metrics.jsonl")
    want = [(row["step"], row["loss/policy"]) for row in rows if "loss/policy" in row]
    assert len({step for step, _ in want}) == len(want)  # one row per update step in JSONL
    server = TensorBoardServer(out, load_fast)
    try:
        served = server.scalars("loss/policy", want[-1][0])
        assert [step for step, _ in served] == [step for step, _ in want]
        assert [value for _, value in served] == pytest.approx([v for _, v in want], rel=1e-6)
        assert server.session_statuses() == ["STATUS_SUCCESS"]
    finally:
        server.close()


def _resume_cli(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``rl-train --resume run_dir --total-timesteps 512 ...`` to completion."""
    return run_cli("--resume", str(run_dir), "--total-timesteps", "512", "--quiet", *extra)


def _refused(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_checkpoint_of_another_run_is_refused_and_nothing_changes(tmp_path):
    """Another run's checkpoint copied in (another algorithm, or the same one) is refused."""
    ours = train(config(tmp_path, "ppo", total=128)).run_dir
    sac = train(config(tmp_path, "sac", total=64)).run_dir
    twin = train(config(tmp_path, "ppo", total=128)).run_dir  # the same algo, env and seed
    own = (ours / "checkpoint.pt").read_bytes()
    for other in (sac, twin):
        shutil.copy(other / "checkpoint.pt", ours / "checkpoint.pt")
        before = snapshot(ours)
        _refused(_resume_cli(ours), "belongs to another run")
        assert snapshot(ours) == before
    (ours / "checkpoint.pt").write_bytes(own)
    assert _resume_cli(ours).returncode == 0


def test_a_malformed_run_json_is_refused_and_kept(tmp_path):
    """run.json that is not a JSON object stops the resume; it is not replaced."""
    run_dir = train(config(tmp_path, total=128)).run_dir
    for text in ('{"status": "finished",', "[1, 2]"):
        (run_dir / "run.json").write_text(text)
        before = snapshot(run_dir)
        _refused(_resume_cli(run_dir), "run.json")
        assert snapshot(run_dir) == before


def test_symlinks_in_a_run_directory_are_refused_and_nothing_outside_is_written(tmp_path):
    """A run file, or tensorboard/, linked elsewhere: one line, the target untouched."""
    run_dir = train(config(tmp_path, total=128)).run_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("metrics.jsonl", "run.json", "config.json", "tensorboard"):
        original = run_dir / f"{name}.orig"
        (run_dir / name).rename(original)
        target = outside / name
        if original.is_dir():
            shutil.copytree(original, target)
        else:
            shutil.copy(original, target)
        (run_dir / name).symlink_to(target)
        before, elsewhere = snapshot(run_dir), snapshot(outside)
        _refused(_resume_cli(run_dir), "is a symbolic link")
        assert snapshot(run_dir) == before and snapshot(outside) == elsewhere
        (run_dir / name).unlink()
        original.rename(run_dir / name)
    assert _resume_cli(run_dir).returncode == 0


def test_an_env_that_is_gone_is_refused_before_anything_changes(tmp_path):
    """A run of an env whose module was removed: one line naming it, the run as it was."""
    module = tmp_path / "gone_envs.py"
    module.write_text(
        "from gymnasium.envs.classic_control import CartPoleEnv\n"
        "from gymnasium.envs.registration import register\n"
        "register(id='Gone-v0', entry_point=CartPoleEnv, max_episode_steps=200)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [*RL_TRAIN, "--algo", "ppo", "--env-id", "gone_envs:Gone-v0", "--total-timesteps",
         "128", "--output-dir", str(tmp_path / "runs"), "--quiet", *PPO_TINY],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    module.unlink()
    before = snapshot(run_dir)
    result = subprocess.run(
        [*RL_TRAIN, "--resume", str(run_dir), "--total-timesteps", "256", "--quiet"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    _refused(result, "gone_envs")
    assert snapshot(run_dir) == before


def test_a_cuda_run_continues_on_the_cpu_with_device(tmp_path):
    """A checkpoint saying cuda: refused in one line where there is no CUDA, resumed with
    --device cpu (the device is the one thing besides the budget a resume may change)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot happen here")
    run_dir = train(config(tmp_path, total=128)).run_dir
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    payload["config"]["device"] = "cuda"  # as a run trained on a GPU saved it
    torch.save(payload, run_dir / "checkpoint.pt")
    before = snapshot(run_dir)
    _refused(_resume_cli(run_dir), "CUDA")
    assert snapshot(run_dir) == before
    assert _resume_cli(run_dir, "--device", "cpu").returncode == 0
    assert json.loads((run_dir / "config.json").read_text())["device"] == "cpu"
    assert load_checkpoint(run_dir / "checkpoint.pt").config["device"] == "cpu"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_resume_removes_what_killed_writes_left_and_survives_a_deleted_tensorboard(tmp_path):
    """Stray .checkpoint.pt.<pid>.tmp files go; a deleted tensorboard/ starts again."""
    run_dir = train(config(tmp_path, total=128)).run_dir
    stray = [run_dir / ".checkpoint.pt.4242.tmp", run_dir / ".run.json.77.tmp"]
    for path in stray:
        path.write_bytes(b"half a file")
    shutil.rmtree(run_dir / "tensorboard")
    assert _resume_cli(run_dir).returncode == 0
    assert not any(path.exists() for path in stray)
    steps = [step for step, _ in read_scalars(run_dir / "tensorboard")["loss/policy"]]
    assert steps and min(steps) > 128


def test_ctrl_c_as_a_resume_starts_is_the_clean_interrupt(tmp_path):
    """SIGINT in the first second of --resume (imports, checks, the open run): exit 130
    and one line, never a traceback."""
    run_dir = train(config(tmp_path, total=128)).run_dir
    for delay in (0.15, 0.3, 0.6, 1.0):
        proc = subprocess.Popen(
            [*RL_TRAIN, "--resume", str(run_dir), "--total-timesteps", "100000000", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 130, (delay, stderr)
        assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, (delay, stderr)
        assert json.loads((run_dir / "run.json").read_text())["status"] != "running"


def test_a_corrupt_checkpoint_is_refused_and_nothing_changes(tmp_path):
    """A truncated checkpoint.pt: one line naming it; rows, run.json and events as they were."""
    run_dir = train(config(tmp_path, total=128)).run_dir
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    before = snapshot(run_dir)
    _refused(_resume_cli(run_dir), "checkpoint.pt is not a readable checkpoint file")
    assert snapshot(run_dir) == before


def test_a_live_run_cannot_be_resumed_by_a_second_process(tmp_path):
    """While rl-train trains, --resume of its directory is refused naming the live pid."""
    proc = start_rl_train(tmp_path / "runs", "--checkpoint-every", "500")
    try:
        run_dir = wait_for(lambda: checkpoint_with_rows_after(tmp_path / "runs"), proc)
        result = run_cli("--resume", str(run_dir), "--total-timesteps", "100000000")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    _refused(result, f"in use by a live process (pid {proc.pid})")
