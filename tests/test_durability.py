"""Faults: kills, full disks, hostile plugins and values, signals at any moment, bad paths.

Real processes, real signals and real file systems (a small tmpfs for a full disk).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rl_training
from rl_training import TrainConfig, create_training_run, evaluate, train
from rl_training.experiment.logging import SinkFailureWarning
from rl_training.plugins import PluginLoadWarning, discover_sinks
from rl_training.testing import assert_sinks_agree, read_jsonl, read_scalars, tiny_config
from rl_training.trainers.buffers import ImageReplayBuffer
from rl_training.trainers.checkpoint import load_checkpoint, save_checkpoint
from rl_training.trainers.observations import layout

RL_TRAIN = [sys.executable, "-m", "rl_training"]
TINY = [arg for hp in ("num_envs=2", "n_steps=32", "batch_size=32", "n_epochs=1")
        for arg in ("--hp", hp)]  # fmt: skip


def rl_train(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """rl-train to completion, output as bytes-safe text."""
    return subprocess.run(
        [*RL_TRAIN, *args], capture_output=True, text=True, errors="surrogateescape",
        timeout=timeout, cwd=cwd,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """The process exited ``code`` with one ``rl-train: error:`` line naming ``fragments``."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rl-train: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@contextlib.contextmanager
def tmpfs(path: Path, *options: str):
    """A real, tiny file system at ``path`` (root only); unmounted afterwards."""
    path.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- kills and full disks -----------------------------------------------------------------


def test_after_sigkill_tensorboard_holds_every_row_but_the_last_second(tmp_path):
    """kill -9 mid-run: TensorBoard has every JSONL row logged more than a second before."""
    proc = subprocess.Popen(
        [*RL_TRAIN, "--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "10000000",
         "--output-dir", str(tmp_path), "--quiet", *TINY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not any(p.stat().st_size > 50_000 for p in tmp_path.glob("*/metrics.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        time.sleep(1.5)  # well under way: rows older than a second exist
        killed_at = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    (run_dir,) = tmp_path.iterdir()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    scalars = read_scalars(run_dir / "tensorboard")
    old = [row for row in rows if row["time"] < killed_at - 1.0]
    assert len(old) > 100
    for key in ("episode/return", "loss/policy"):
        tb_steps = [step for step, _ in scalars[key]]
        json_steps = [row["step"] for row in old if key in row]
        assert tb_steps[: len(json_steps)] == json_steps, key


def test_full_disk_run_ends_failed_with_one_line(tmp_path):
    """A full disk: one line naming the file and the OS error, run.json 'failed', whole lines
    in metrics.jsonl and whole records in TensorBoard, no temporary file left."""
    with tmpfs(tmp_path / "disk", "size=256k") as disk:
        result = rl_train("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps",
                          "200000", "--output-dir", str(disk / "runs"), "--quiet")  # fmt: skip
        one_error_line(result, 1, "No space left on device", str(disk / "runs"))
        (run_dir,) = (disk / "runs").iterdir()
        assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
        rows = read_jsonl(run_dir / "metrics.jsonl")  # strict: fails on a partial line
        assert rows and read_scalars(run_dir / "tensorboard")["episode/return"]
        assert not [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_a_disk_full_at_model_pt_leaves_a_failed_run_that_resumes_to_write_it(tmp_path):
    """No room left for model.pt alone (a tmpfs out of inodes right after the final
    checkpoint): run.json says failed, and resume agrees, writing the model."""
    with tmpfs(tmp_path / "disk", "nr_inodes=9") as disk:  # the root + 7 run files + 1
        args = ("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "256",
                "--checkpoint-every", "0", "--output-dir", str(disk / "runs"), "--quiet",
                "--log-sinks", "json,tensorboard", "--hp", "n_steps=32", "--hp", "num_envs=2",
                "--hp", "batch_size=32")  # fmt: skip
        result = rl_train(*args)
        assert result.returncode == 1, result.stderr
        assert "model.pt" in result.stderr and "No space left on device" in result.stderr
        (run_dir,) = (disk / "runs").iterdir()
        assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
        assert load_checkpoint(run_dir / "checkpoint.pt").step == 256  # the budget was spent
        assert not (run_dir / "model.pt").exists()
        subprocess.run(["mount", "-o", "remount,nr_inodes=64", str(disk)], check=True)
        resumed = rl_train("--resume", str(run_dir), "--quiet")
        assert resumed.returncode == 0, resumed.stderr
        assert (run_dir / "model.pt").is_file()
        assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
        again = rl_train("--resume", str(run_dir))
        one_error_line(again, 2, "already finished")  # and now the two agree


def test_a_checkpoint_filling_the_disk_is_an_oserror_naming_it_and_the_old_one_stays(tmp_path):
    """torch.save writes straight into the temporary file: a full disk there is the OS
    error naming checkpoint.pt (not torch's RuntimeError), the previous checkpoint is
    kept whole and no temporary file is left."""
    space = gym.spaces.Box(0, 255, (4, 16, 16), np.uint8)
    buffer = ImageReplayBuffer(400, layout(space), 1, (), True, torch.device("cpu"))
    buffer.obs.random_(0, 256)

    def save(rows: int) -> None:
        buffer.size = buffer.pos = rows
        save_checkpoint(disk / "checkpoint.pt", config=tiny_config(), step=rows,
                        state={"buffer": buffer.state_dict()},
                        spaces=(space, gym.spaces.Discrete(2)))  # fmt: skip

    with tmpfs(tmp_path / "disk", "size=256k") as disk:
        save(20)  # 20 KB of frames
        with pytest.raises(OSError, match="No space left on device") as error:
            save(400)  # 400 KB
        assert str(disk / "checkpoint.pt") in str(error.value)
        assert [p.name for p in disk.iterdir()] == ["checkpoint.pt"]
        kept = load_checkpoint(disk / "checkpoint.pt")
        assert kept.step == 20
        assert torch.equal(kept.trainer["buffer"]["obs"], buffer.obs[:20])


def test_full_disk_drops_the_sinks_with_a_warning_and_keeps_whole_lines(tmp_path):
    """Logging onto a full disk: each sink warns once and is dropped; what it wrote is whole."""
    with tmpfs(tmp_path / "disk", "size=128k") as disk:
        config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=10,
                             output_dir=disk / "runs")  # fmt: skip
        with pytest.warns(SinkFailureWarning, match="No space left") as warned:
            with create_training_run(config) as run:
                for step in range(5000):
                    run.logger.log_metrics(
                        {f"k{i}/" + "x" * 60: float(step) for i in range(10)}, step
                    )
                    if not run.logger.sink_names:
                        break
        assert not run.logger.sink_names and step < 4999
        assert {str(w.message).split("'")[1] for w in warned} == {"json", "tensorboard"}
        rows = read_jsonl(run.run_context.metrics_path)
        scalars = read_scalars(run.run_context.tensorboard_dir)
        assert [r["step"] for r in rows] == list(range(len(rows)))
        assert [s for s, _ in scalars["k0/" + "x" * 60]] == list(
            range(len(scalars["k0/" + "x" * 60]))
        )
        assert json.loads((run.run_dir / "run.json").read_text())["status"] == "finished"


# -- hostile plugins and values -----------------------------------------------------------

EXITING_AT_IMPORT = """
    import sys
    sys.exit("this plugin parses sys.argv at import")
"""

EXITING_SINK = """
    import rl_training

    class ExitingSink:
        def __init__(self, run_context):
            pass

        def log_config(self, config):
            pass

        def log_metrics(self, metrics, step):
            raise SystemExit(3)

        def close(self):
            pass

    @rl_training.hookimpl
    def rl_training_log_sinks():
        return {"exiting": ExitingSink}
"""


def test_plugin_raising_system_exit_at_import_is_skipped(install_plugin):
    """A plugin calling sys.exit at import is reported and skipped; the built-ins still work."""
    install_plugin("rl-training-exits", EXITING_AT_IMPORT, entry_name="exits")
    with pytest.warns(PluginLoadWarning, match="exits.*SystemExit"):
        catalog = discover_sinks()
    assert {"json", "tensorboard"} <= set(catalog.sinks)
    assert [f.entry_point.split(" =")[0] for f in catalog.failures] == ["exits"]


def test_sink_raising_system_exit_is_dropped_and_the_run_goes_on(install_plugin, tmp_path):
    """SystemExit from a sink's log_metrics drops that sink; the others keep every row."""
    install_plugin("rl-training-exiting", EXITING_SINK, entry_name="exiting")
    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=10,
                         output_dir=tmp_path, log_sinks=("exiting", "json"))  # fmt: skip
    with pytest.warns(SinkFailureWarning, match="'exiting'.*SystemExit"):
        with create_training_run(config) as run:
            for step in range(3):
                run.logger.log_metrics({"x": step}, step)
    assert [row["x"] for row in read_jsonl(run.run_context.metrics_path)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("metrics", "step", "fragment"),
    [
        ({"ok": 1.0, "bad\ud800": 1.0}, 0, "not valid text"),
        ({"ok": 1.0}, 2**63, r"up to 2\*\*63 - 1"),
        ({"ok": 1.0, "huge": 10**400}, 0, "'huge': an int of 1329 bits is beyond float range"),
    ],
)
def test_values_that_would_kill_sinks_are_refused_before_any_sink(
    tmp_path, metrics, step, fragment
):
    """A lone surrogate key, a step of 2**63, an int beyond float: ValueError, nothing written,
    and every sink stays for the next good row."""
    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=10,
                         output_dir=tmp_path)  # fmt: skip
    with create_training_run(config) as run:
        with pytest.raises(ValueError, match=fragment):
            run.logger.log_metrics(metrics, step)
        run.logger.log_metrics({"ok": 2.0}, 5)
        assert run.logger.sink_names == ("json", "tensorboard")
    assert_sinks_agree(run.run_dir)
    assert [row["step"] for row in read_jsonl(run.run_context.metrics_path)] == [5]


def test_evaluate_never_imports_a_module_named_in_a_run_directory(tmp_path, monkeypatch):
    """An env id 'module:Env' from a model file is made without importing 'module'."""
    result = train(TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=64,
                               output_dir=tmp_path / "runs", device="cpu",
                               hyperparams={"n_steps": 16}))  # fmt: skip
    marker = tmp_path / "imported"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = result.run_dir / "model.pt"
    payload = torch.load(model, weights_only=True)
    payload["env_id"] = "evil_module:CartPole-v1"
    torch.save(payload, model)
    assert len(evaluate(result.run_dir, n_episodes=1).returns) == 1  # the registered env
    payload["env_id"] = "evil_module:NotRegistered-v0"
    torch.save(payload, model)
    with pytest.raises(ValueError, match="'evil_module'.*never imports"):
        evaluate(result.run_dir, n_episodes=1)
    assert not marker.exists() and "evil_module" not in sys.modules


# -- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.5, 2.2])
def test_a_signal_at_any_moment_leaves_no_run_or_an_interrupted_one(tmp_path, delay):
    """SIGTERM while starting up: no run directory, or one whose run.json says interrupted."""
    proc = subprocess.Popen(
        [*RL_TRAIN, "--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "100000",
         "--output-dir", str(tmp_path), "--quiet", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in stderr
    runs = list(tmp_path.iterdir())
    assert len(runs) <= 1
    for run_dir in runs:
        assert proc.returncode == 143
        assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
        assert not list(run_dir.glob(".*.tmp"))


def test_second_ctrl_c_stops_at_once_with_every_sink_closed(tmp_path):
    """Two SIGINTs in quick succession: exit 130, no traceback, run closed 'interrupted'."""
    proc = subprocess.Popen(
        [*RL_TRAIN, "--algo", "sac", "--env-id", "Pendulum-v1", "--total-timesteps", "100000",
         "--output-dir", str(tmp_path), "--quiet", "--hp", "learning_starts=10",
         "--hp", "log_interval=10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not any(p.stat().st_size > 2_000 for p in tmp_path.glob("*/metrics.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    (run_dir,) = tmp_path.iterdir()
    assert str(run_dir) in stdout
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert_sinks_agree(run_dir)


# -- bad paths ----------------------------------------------------------------------------


def test_output_dir_that_is_a_file_is_one_line(tmp_path):
    """--output-dir naming a file: exit 2, one line, the file untouched."""
    (tmp_path / "afile").write_text("keep")
    result = rl_train("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "64",
                      "--output-dir", str(tmp_path / "afile"))  # fmt: skip
    one_error_line(result, 2, "is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "keep"


def test_read_only_output_dir_is_one_line(tmp_path):
    """A read-only file system: exit 1, one line naming the path and the OS error."""
    with tmpfs(tmp_path / "ro", "ro", "size=64k") as ro:
        result = rl_train("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "64",
                          "--output-dir", str(ro / "runs"))  # fmt: skip
        one_error_line(result, 1, str(ro / "runs"), "Read-only file system")


FAILING_FACTORY = """
    import rl_training

    def broken(run_context):
        raise ConnectionError("tracking server unreachable")

    @rl_training.hookimpl
    def rl_training_log_sinks():
        return {"broken": broken}
"""


def test_sink_factory_failure_is_one_line_and_leaves_nothing(tmp_path, install_plugin):
    """A sink that fails to start: exit 1, one line naming it, no run directory."""
    install_plugin("rl-training-broken", FAILING_FACTORY, entry_name="broken")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [*RL_TRAIN, "--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "64",
         "--output-dir", str(tmp_path / "runs"), "--log-sinks", "json,broken"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    one_error_line(result, 1, "'broken'", "tracking server unreachable")
    assert not (tmp_path / "runs").exists()


def test_non_utf8_output_and_working_directories_work(tmp_path):
    """Directory names that are not UTF-8 train, and their JSON files stay valid UTF-8."""
    cwd = Path(os.fsdecode(bytes(tmp_path) + b"/cwd-\xfe"))
    cwd.mkdir()
    out = os.fsdecode(b"runs-\xff")
    result = rl_train("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "64",
                      "--output-dir", out, "--quiet", *TINY, cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run_dir,) = (cwd / out).iterdir()
    info = json.loads((run_dir / "run.json").read_bytes().decode("utf-8"))
    assert info["status"] == "finished" and info["cwd"].endswith("cwd-\\udcfe")
    config = json.loads((run_dir / "config.json").read_bytes().decode("utf-8"))
    assert config["output_dir"] == "runs-\\udcff"
    assert f"run {Path(out, run_dir.name)}: " in result.stdout  # printed as its own bytes
    link = tmp_path / "utf8-link"  # tensorboard's own reader cannot open non-UTF-8 paths
    link.symlink_to(run_dir)
    assert_sinks_agree(link)
    assert rl_training.evaluate(run_dir, n_episodes=1).returns
