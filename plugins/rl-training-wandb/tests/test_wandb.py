"""What the wandb sink writes, read back with W&B's own reader (offline runs only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rl_training_wandb import ID_FILE, wandb_mode

from conftest import attempts, history
from rl_training import create_training_run
from rl_training.testing import killed_on_exit, read_jsonl, tiny_config, wait_for

RL_TRAIN = [sys.executable, "-m", "rl_training", "--algo", "ppo", "--env-id", "CartPole-v1",
            "--quiet", "--log-sinks", "json,wandb", "--hp", "num_envs=2", "--hp", "n_steps=32",
            "--hp", "batch_size=32", "--hp", "n_epochs=1"]  # fmt: skip


def clean_env():
    """This environment, less the W&B service an in-process test started (W&B publishes
    it in WANDB_SERVICE, and a child would share it)."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def records_of(records, kind):
    return [r[kind] for r in records if r["type"] == kind]


def points(rows):
    """key -> [(env_step, value)] of history rows (W&B's own keys left out)."""
    found: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if not key.startswith("_") and key != "env_step":
                found.setdefault(key, []).append((row["env_step"], value))
    return found


def jsonl_points(rows):
    found: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "time"):
                found.setdefault(key, []).append((row["step"], value))
    return found


def test_an_rl_train_run_is_one_offline_wandb_run(tmp_path, monkeypatch):
    """No WANDB_MODE and no credentials: offline, in the run directory. The config is the
    W&B config, every metrics.jsonl row is a history row at its env_step (the x axis of
    every chart), and the run ends with exit code 0."""
    monkeypatch.delenv("WANDB_MODE")
    out = tmp_path / "runs"
    done = subprocess.run([*RL_TRAIN, "--output-dir", str(out), "--total-timesteps", "1024"],
                          capture_output=True, text=True, timeout=180, env=clean_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_dir,) = out.iterdir()
    stored = json.loads((run_dir / ID_FILE).read_text())
    assert stored["project"] == "rl-training"
    (records,) = attempts(run_dir)
    (run,) = records_of(records, "run")
    assert run["run_id"] == stored["id"] and run["project"] == "rl-training"
    assert run["telemetry"]["feature"]["offline"] is True
    config = json.loads((run_dir / "config.json").read_text())
    logged = run["config"]["update"] | {
        k: v for c in records_of(records, "config") for k, v in c["update"].items()
    }
    assert logged["algo"] == config["algo"] == "ppo"
    assert logged["resolved_hyperparams"] == config["resolved_hyperparams"]
    metrics = records_of(records, "metric")
    assert {"glob_name": "*", "step_metric": "env_step"}.items() <= {
        k: v for m in metrics if m.get("glob_name") == "*" for k, v in m.items()
    }.items()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert points(history(run_dir)) == jsonl_points(rows)
    (end,) = records_of(records, "exit")
    assert end.get("exit_code", 0) == 0
    summary = {k: v for s in records_of(records, "summary") for k, v in s["update"].items()}
    assert summary["rl_training/status"] == "finished"
    sinks = json.loads((run_dir / "run.json").read_text())["sinks"]
    assert sinks["wandb"] == {"delivery": "background", "calls": len(rows) + 1, "dropped": 0,
                              "undelivered": 0, "error": None}  # fmt: skip


@pytest.mark.parametrize(("exception", "code"), [(RuntimeError, 1), (KeyboardInterrupt, 130)])
def test_failed_and_interrupted_runs_end_with_their_exit_code(tmp_path, exception, code):
    """A failed run finishes with exit code 1, an interrupted one 130, values kept."""
    config = tiny_config(output_dir=tmp_path / "runs", log_sinks=("wandb",))
    with pytest.raises(exception), create_training_run(config) as run:
        run.logger.log_metrics({"m": 1.0}, 3)
        raise exception
    (records,) = attempts(run.run_dir)
    assert records_of(records, "exit")[0]["exit_code"] == code
    assert points(history(run.run_dir)) == {"m": [(3, 1.0)]}


def test_kill_and_resume_continue_the_same_wandb_run(tmp_path):
    """kill -9 mid-run, then --resume: a second attempt of the same W&B run id, whose
    rows start after the checkpoint's step S and run to the new budget; the config's
    total_timesteps is updated; the attempt ends with exit code 0."""
    from rl_training.trainers.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    proc = subprocess.Popen([*RL_TRAIN, "--output-dir", str(out), "--total-timesteps",
                             "10000000", "--checkpoint-every", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=clean_env())  # fmt: skip

    def checkpointed() -> Path | None:
        for checkpoint in out.glob("*/checkpoint.pt"):
            try:
                if load_checkpoint(checkpoint).step >= 2000:
                    return checkpoint.parent
            except (ValueError, OSError, EOFError, RuntimeError):
                continue
        return None

    with killed_on_exit(proc):
        run_dir = wait_for(checkpointed, proc, timeout=120)
        os.killpg(proc.pid, signal.SIGKILL)
    step = load_checkpoint(run_dir / "checkpoint.pt").step
    done = subprocess.run([*RL_TRAIN[:3], "--resume", str(run_dir), "--total-timesteps",
                           str(step + 512), "--quiet"], capture_output=True, text=True,
                          timeout=180, env=clean_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = attempts(run_dir)
    (run1,), (run2,) = records_of(first, "run"), records_of(second, "run")
    assert run1["run_id"] == run2["run_id"] == json.loads((run_dir / ID_FILE).read_text())["id"]
    assert records_of(second, "exit")[0].get("exit_code", 0) == 0
    summary = {k: v for s in records_of(second, "summary") for k, v in s["update"].items()}
    assert summary["rl_training/resume_step"] == step
    resumed = [r["history"]["item"]["env_step"] for r in second if r["type"] == "history"]
    assert resumed and min(resumed) > step and max(resumed) == step + 512
    config = {k: v for c in records_of(second, "config") for k, v in c["update"].items()}
    assert config["total_timesteps"] == step + 512


def test_ctrl_c_on_the_terminal_ends_the_run_and_the_wandb_run(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (W&B's service
    process included): rl-train exits 130, run.json "interrupted", the W&B run ends
    with exit code 130 and the rows logged so far."""
    out = tmp_path / "runs"
    proc = subprocess.Popen([*RL_TRAIN, "--output-dir", str(out), "--total-timesteps",
                             "10000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=clean_env())  # fmt: skip
    with killed_on_exit(proc):
        rows = lambda: any(len(read_jsonl(p)) >= 5 for p in out.glob("*/metrics.jsonl"))  # noqa: E731
        wait_for(rows, proc, timeout=120)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    (records,) = attempts(run_dir)
    assert records_of(records, "exit")[0]["exit_code"] == 130
    assert points(history(run_dir)) == jsonl_points(read_jsonl(run_dir / "metrics.jsonl"))


def test_offline_unless_wandb_is_set_up_to_go_online(tmp_path, monkeypatch):
    """WANDB_MODE wins; without it, credentials (an API key, or `wandb login`'s netrc
    entry for the W&B host) leave the mode to W&B (online), and none mean offline."""
    assert wandb_mode() is None  # WANDB_MODE=offline is set by the fixture: W&B reads it
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode() == "offline"  # NETRC names no file, no key
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "offline"  # credentials for another host
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert wandb_mode() is None
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode() == "offline"  # a self-hosted server it has no credentials for
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() is None


def test_every_kind_of_value_is_a_wandb_media_value(tmp_path):
    """Images, videos (animated GIF), histograms (rl-training's bins) and text, read back
    from the offline run: each a W&B value of its type, the files beside the run."""
    import numpy as np

    from rl_training import Histogram, Image, Text, Video

    config = tiny_config(output_dir=tmp_path / "runs", log_sinks=("wandb",))
    with create_training_run(config) as run:
        run.logger.log_metrics({"loss": 0.5, "frame": Image(np.zeros((4, 6, 3), np.uint8)),
                                "clip": Video(np.zeros((5, 4, 6, 3), np.uint8), fps=10),
                                "w": Histogram(np.arange(8.0), bins=4), "note": Text("hi")},
                               7)  # fmt: skip
    (row,) = history(run.run_dir)
    assert row["env_step"] == 7 and row["loss"] == 0.5 and row["note"] == "hi"
    assert row["frame._type"] == "image-file" and row["frame.width"] == 6
    assert row["clip._type"] == "video-file" and row["clip.path"].endswith(".gif")
    assert row["w._type"] == "histogram" and row["w.values"] == [2, 2, 2, 2]
    (files,) = list(Path(run.run_dir, "wandb").glob("offline-run-*/files"))
    assert (files / row["frame.path"]).is_file() and (files / row["clip.path"]).is_file()
