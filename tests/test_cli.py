"""rl-train as a user runs it: real subprocesses, real signals, files read back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_training import TrainConfig
from rl_training.cli import parse_hyperparams
from rl_training.errors import ConfigError
from rl_training.runtime.run_utils import create_training_run
from rl_training.testing import RECORDING_SINK_PLUGIN, read_jsonl, read_scalars

RL_TRAIN = shutil.which("rl-train") or str(Path(sys.executable).with_name("rl-train"))
TINY = ["--hp", "n_steps=16", "--hp", "num_envs=2", "--hp", "batch_size=32", "--hp", "n_epochs=1"]


def run_cli(*args, env=None, timeout=120, module=False):
    command = [sys.executable, "-m", "rl_training"] if module else [RL_TRAIN]
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = output_dir.iterdir()
    return run_dir


@pytest.mark.parametrize("module", [False, True], ids=["rl-train", "python -m rl_training"])
def test_short_training_run(tmp_path, module):
    """A real run exits 0 and prints a summary line naming the run, then the tensorboard command.

    Both lines fit in 120 columns (the run directory's name is about 40 characters).
    """
    out = tmp_path / "runs"
    result = run_cli(
        "--algo",
        "ppo",
        "--env-id",
        "CartPole-v1",
        "--total-timesteps",
        128,
        "--output-dir",
        out,
        "--quiet",
        *TINY,
        module=module,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    line, view = result.stdout.splitlines()
    run_dir = only_run_dir(out)
    assert line.startswith(f"run {run_dir}: 128 steps in ") and "mean return" in line
    assert view == f"view: tensorboard --logdir {out}"
    assert len(line) - len(str(out)) <= 120 - len("runs")  # with a plain "runs" it fits
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert (run_dir / "model.pt").is_file()


@pytest.mark.parametrize("sinks", ["json", "tensorboard", "json,tensorboard", "recording,json"])
def test_each_sink_combination_writes_its_files(tmp_path, install_plugin, sinks):
    """--log-sinks picks exactly the sinks named, installed plugins included."""
    install_plugin("rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording")
    out = tmp_path / "runs"
    result = run_cli(
        "--algo",
        "a2c",
        "--env-id",
        "CartPole-v1",
        "--total-timesteps",
        200,
        "--output-dir",
        out,
        "--log-sinks",
        sinks,
        "--quiet",
        "--hp",
        "log_interval=2",
        env={"PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(out)
    names = sinks.split(",")
    assert (run_dir / "metrics.jsonl").exists() == ("json" in names)
    # tensorboard/ is made with the run and removed at the end if no sink wrote in it
    assert (run_dir / "tensorboard").exists() == ("tensorboard" in names)
    assert ("view: tensorboard --logdir" in result.stdout) == ("tensorboard" in names)
    if "json" in names:
        assert any("loss/policy" in row for row in read_jsonl(run_dir / "metrics.jsonl"))
    if "tensorboard" in names:
        assert "loss/policy" in read_scalars(run_dir / "tensorboard")
    if "recording" in names:
        assert (run_dir / "recording.txt").read_text().splitlines()[-1] == "close finished"
    assert json.loads((run_dir / "run.json").read_text())["log_sinks"] == names


def test_list_sinks_names_providers_and_broken_plugins(tmp_path, install_plugin):
    """--list-sinks shows every sink with its distribution and version, and failed plugins."""
    install_plugin(
        "rl-training-recording", RECORDING_SINK_PLUGIN, entry_name="recording", version="0.3"
    )
    install_plugin("rl-training-broken", "raise ImportError('needs libfoo')\n", entry_name="broken")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    result = run_cli("--list-sinks", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("json ") and "rl-training" in line for line in lines)
    assert any(line.startswith("tensorboard ") for line in lines)
    assert any(
        line.startswith("recording ") and "rl-training-recording 0.3" in line for line in lines
    )
    assert any("broken" in line and "needs libfoo" in line for line in lines)

    as_json = json.loads(run_cli("--list-sinks", "--json", env=env).stdout)
    by_name = {s["name"]: s for s in as_json["sinks"]}
    assert by_name["recording"]["distribution"] == "rl-training-recording"
    assert by_name["json"]["distribution"] == "rl-training"
    assert as_json["failed_plugins"][0]["distribution"] == "rl-training-broken 1.0"

    disabled = run_cli("--list-sinks", env={**env, "RL_TRAINING_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "recording" not in disabled.stdout and "broken" not in disabled.stdout


BAD_INPUT = {
    "unknown algo": (["--algo", "trpo"], "trpo"),
    "unknown env": (["--env-id", "NoSuchEnv-v0"], "'NoSuchEnv-v0'"),
    "unknown sink": (["--log-sinks", "json,nosuch"], "'nosuch'"),
    "unknown hp": (["--hp", "clip_rnage=0.1"], "'clip_rnage'"),
    "hp not key=value": (["--hp", "clip_range"], "KEY=VALUE"),
    "hp bad number": (["--hp", "learning_rate=fast"], "learning_rate"),
    "hp out of range": (["--hp", "gamma=1.5"], "gamma"),
    "bad timesteps": (["--total-timesteps", "0"], "total_timesteps"),
    "bad device": (["--device", "tpu"], "'tpu'"),
    "algo vs action space": (["--algo", "sac"], "'sac'"),
    "missing option": (["--env-id", None], "--env-id"),
    "seed beyond 64 bits": (["--seed", str(2**64)], "seed: 18446744073709551616"),
    "tuple observations": (["--env-id", "Blackjack-v1"], "observation space is Tuple"),
    "run suffix too long": (["--run-suffix", "x" * 250], "run_suffix"),
    "bad precision": (["--algo", "dqn", "--hp", "precision=fp16"], "got 'fp16'"),
    "precisions disagree": (
        ["--algo", "dqn", "--precision", "bf16", "--hp", "precision=fp32"],
        "disagree",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_no_traceback_nothing_written(tmp_path, case):
    """Bad input exits non-zero with one line naming the value; no traceback; no run directory."""
    changes, fragment = BAD_INPUT[case]
    options = {"--algo": "ppo", "--env-id": "CartPole-v1", "--total-timesteps": "100"}
    extra = []
    for flag, value in zip(changes[::2], changes[1::2], strict=True):
        if flag in options:
            options[flag] = value
        else:
            extra += [flag, value]
    args = [a for flag, value in options.items() if value is not None for a in (flag, value)]
    result = run_cli(*args, *extra, "--output-dir", tmp_path / "runs", "--quiet")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert fragment in lines[0] and lines[0].startswith("rl-train: error: ")
    assert not (tmp_path / "runs").exists()


def test_hp_values_are_typed_by_their_defaults():
    """--hp reads ints, floats, bools, lists and SAC's 'auto' by each hyperparameter's type."""
    assert parse_hyperparams(
        "ppo", ["n_steps=64", "learning_rate=1e-3", "anneal_lr=false", "net_arch=32,32"]
    ) == {"n_steps": 64, "learning_rate": 1e-3, "anneal_lr": False, "net_arch": (32, 32)}
    assert parse_hyperparams("sac", ["ent_coef=auto_0.1", "target_entropy=-2"]) == {
        "ent_coef": "auto_0.1",
        "target_entropy": -2.0,
    }
    with pytest.raises(ConfigError, match="n_steps"):
        parse_hyperparams("ppo", ["n_steps=1.5"])


def start_long_run(tmp_path, *extra):
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            RL_TRAIN,
            "--algo",
            "ppo",
            "--env-id",
            "CartPole-v1",
            "--total-timesteps",
            "10000000",
            "--output-dir",
            str(out),
            "--quiet",
            *TINY,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # wait until training is well under way
        runs = list(out.glob("*/metrics.jsonl")) if out.exists() else []
        if runs and runs[0].stat().st_size > 20_000:
            return proc, runs[0].parent
        time.sleep(0.05)
    proc.kill()
    pytest.fail("training did not start")


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly(tmp_path, sig, status):
    """SIGINT/SIGTERM: exit 130/143, run marked interrupted, every sink flushed and closed."""
    proc, run_dir = start_long_run(tmp_path, "--log-sinks", "json,tensorboard")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert str(run_dir) in stdout and "Traceback" not in stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    scalars = read_scalars(run_dir / "tensorboard")
    for key in ("episode/return", "loss/policy"):
        assert [r["step"] for r in rows if key in r] == [s for s, _ in scalars[key]]


def test_progress_lines_when_not_a_terminal(tmp_path):
    """Off a terminal, a plain line: steps, steps/s, episodes, their mean return, time left."""
    import io

    from rl_training.cli import Progress

    stream = io.StringIO()
    progress = Progress(stream=stream, interval=0.0)
    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=1000,
                         output_dir=tmp_path, log_sinks=("json",))  # fmt: skip
    with create_training_run(config) as run:
        progress.run_opened(run)
    progress({"episode/return": 10.0, "episode/length": 10, "episode/return_mean": 10.0}, 100)
    progress({"episode/return": 20.0, "episode/length": 20, "episode/return_mean": 15.0}, 200)
    progress({"time/sps": 400.0, "loss/value": 1.0}, 400)
    progress.close()
    last = stream.getvalue().splitlines()[-1]
    assert last == (
        "steps 400/1000 (40%) | 400 steps/s | 2 episodes, mean return 15.00 | time left 2s"
    )


def test_a_preset_fills_the_hyperparameters_under_hp():
    """--preset atari is rl-zoo's values; --hp overrides one of them."""
    from rl_training.cli import build_parser, config_from_args
    from rl_training.presets import PRESETS

    args = build_parser().parse_args(["--algo", "ppo", "--env-id", "ALE/Breakout-v5",
                                      "--total-timesteps", "1000", "--preset", "atari",
                                      "--hp", "num_envs=2"])  # fmt: skip
    config = config_from_args(args)
    hp = config.algo_hyperparams()
    assert hp.num_envs == 2 and hp.n_steps == 128 and hp.batch_size == 256
    assert hp.net_arch == () and hp.ent_coef == 0.01 and hp.clip_range == 0.1
    assert hp.anneal_lr and hp.anneal_clip_range  # the zoo's lin_2.5e-4 and lin_0.1
    for name, preset in PRESETS.items():  # every preset value is a valid hyperparameter
        for algo, values in preset.items():
            TrainConfig(algo=algo, env_id="CartPole-v1", seed=0, total_timesteps=100,
                        hyperparams=values).algo_hyperparams()  # fmt: skip
            assert name in ("atari", "mujoco")


def test_precision_sets_the_hyperparameter_and_a_run_records_it(tmp_path):
    """--precision bf16 is --hp precision=bf16; the run's config.json keeps it, and a
    resume continues in it."""
    from rl_training.cli import build_parser, config_from_args

    argv = ["--algo", "dqn", "--env-id", "CartPole-v1", "--total-timesteps", "1000"]
    args = build_parser().parse_args([*argv, "--precision", "bf16"])
    assert config_from_args(args).algo_hyperparams().precision == "bf16"
    result = run_cli("--algo", "td3", "--env-id", "Pendulum-v1", "--total-timesteps", "200",
                     "--hp", "learning_starts=100", "--hp", "net_arch=16,16",
                     "--precision", "bf16", "--output-dir", tmp_path, "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)
    assert json.loads((run / "config.json").read_text())["hyperparams"]["precision"] == "bf16"
    resumed = run_cli("--resume", run, "--total-timesteps", "300", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 300
    refused = run_cli("--resume", run, "--total-timesteps", "400", "--precision", "fp32")
    assert refused.returncode == 2 and "--precision" in refused.stderr


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--algo", "ppo", "--preset", "minecraft"], "'minecraft' is not one of 'atari', 'mujoco'"),
        (["--algo", "sac", "--preset", "atari"], "has no values for algo 'sac'"),
    ],
)
def test_a_bad_preset_is_one_line_and_no_run(tmp_path, argv, fragment):
    proc = subprocess.run(
        [sys.executable, "-m", "rl_training", *argv, "--env-id", "CartPole-v1", "--seed", "0",
         "--total-timesteps", "100",
         "--output-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs").exists()
