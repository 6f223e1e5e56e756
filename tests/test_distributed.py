"""Distributed training under torchrun: two real CPU processes (gloo), read back from disk.

Every launch is ``python -m torch.distributed.run --standalone --nproc_per_node=2`` as a
subprocess in its own process group, killed whole if it outlives its bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rl_training import TrainConfig, load_policy, reduce_metrics
from rl_training.registry import ALGOS, get_spec
from rl_training.runtime.context import RunLock
from rl_training.runtime.device import resolve_device
from rl_training.runtime.distributed import World, launch_world
from rl_training.runtime.plan import resolve_plan
from rl_training.testing import SLOW_SINK_PLUGIN, assert_sinks_agree, read_jsonl
from rl_training.trainers.checkpoint import load_checkpoint

SUPPORT = Path(__file__).parent / "support"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY = {
    "ppo": ["--hp", "num_envs=2", "--hp", "n_steps=64", "--hp", "batch_size=64",
            "--hp", "n_epochs=2"],
    "a2c": ["--hp", "num_envs=2", "--hp", "n_steps=8", "--hp", "log_interval=256"],
}  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")]))
    return env


def launch(*args: str, cwd: Path) -> subprocess.Popen:
    """torchrun with 2 ranks in its own process group."""
    return subprocess.Popen(
        [*TORCHRUN, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> tuple[int, str, str]:
    """Wait at most ``timeout`` s; on overrun kill the whole process group and fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not end within {timeout}s:\n{err[-3000:]}")
    return proc.returncode, out, err


def train_2(tmp_path: Path, algo: str, total: int, *extra: str) -> tuple[int, str, str]:
    proc = launch("-m", "rl_training", "--algo", algo, "--env-id", "CartPole-v1",
                  "--total-timesteps", str(total), "--device", "cpu", "--output-dir", "runs",
                  "--quiet", *TINY[algo], *extra, cwd=tmp_path)  # fmt: skip
    return finish(proc)


def only_run(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("algo", [algo for algo in ALGOS if get_spec(algo).distributed])
def test_two_ranks_train_one_run_whose_rows_describe_both(tmp_path, algo):
    """Two torchrun ranks write one run, once, whose steps and episodes count both ranks."""
    total = 2048
    code, out, err = train_2(tmp_path, algo, total)
    assert code == 0, err[-3000:]
    run_dir = only_run(tmp_path)
    # One summary line, from rank 0 only.
    assert sum(line.startswith("run ") for line in out.splitlines()) == 1, out
    info = json.loads((run_dir / "run.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert info["status"] == "finished"
    assert info["world_size"] == config["world_size"] == 2
    # Single writer: JSONL (strictly parsed) and TensorBoard agree point for point.
    rows = assert_sinks_agree(run_dir)
    assert len(rows) == len({(r["step"], r["time"], tuple(r)) for r in rows})  # no doubled row
    # Global steps: both ranks' environments, in steps of 2 ranks x num_envs.
    train_rows = [r for r in rows if "loss/policy" in r]
    assert train_rows[-1]["step"] == total
    assert all(r["step"] % 4 == 0 for r in rows)
    assert info["summary"]["steps"] == total
    # Every episode of both ranks: their lengths cover nearly every env step (one
    # rank's would be about half).
    episodes = [r for r in rows if "episode/return" in r]
    covered = sum(r["episode/length"] for r in episodes)
    assert 0.85 * total <= covered <= total
    assert info["summary"]["episodes"] == len(episodes)
    assert train_rows[-1]["time/sps"] > 0
    # The replicas end identical, and rank 0's model is the run's.
    assert info["summary"]["replicas"] == {"world_size": 2, "max_weight_difference": 0.0}
    policy = load_policy(run_dir)
    assert policy.predict(torch.zeros(4).numpy()) in (0, 1)


def test_an_algorithm_without_distributed_support_is_refused_before_any_run_directory(tmp_path):
    """An algorithm that cannot train on several processes is one error line and no run dir."""
    proc = launch("-m", "rl_training", "--algo", "dqn", "--env-id", "CartPole-v1",
                  "--total-timesteps", "1000", "--output-dir", "runs", cwd=tmp_path)  # fmt: skip
    code, out, err = finish(proc, timeout=60)
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("rl-train: error:")]
    assert lines == [
        "rl-train: error: algo: 'dqn' does not train on several processes yet "
        "(WORLD_SIZE=2); run it in one process, or use ppo or a2c under torchrun"
    ]
    assert "exitcode  : 2" in err  # torchrun's report of our exit status
    assert not (tmp_path / "runs").exists()


def _wait_for_row(run_root: Path, proc: subprocess.Popen, timeout: float = 90.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for jsonl in run_root.glob("*/metrics.jsonl"):
            if any("loss/policy" in r for r in read_jsonl(jsonl)):
                return jsonl.parent
        if proc.poll() is not None:
            pytest.fail(f"torchrun ended early: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no training row in time")


def test_sigterm_to_the_launcher_checkpoints_and_the_run_resumes_under_torchrun(tmp_path):
    """SIGTERM to torchrun checkpoints every rank; the run resumes under torchrun from there."""
    proc = launch("-m", "rl_training", "--algo", "ppo", "--env-id", "CartPole-v1",
                  "--total-timesteps", "5000000", "--device", "cpu", "--output-dir", "runs",
                  "--quiet", *TINY["ppo"], cwd=tmp_path)  # fmt: skip
    run_dir = _wait_for_row(tmp_path / "runs", proc)
    os.kill(proc.pid, signal.SIGTERM)  # the launcher only; it passes it on to the ranks
    code, out, err = finish(proc, timeout=60)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted", err[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    step = checkpoint.step
    assert step > 0 and step % 4 == 0
    assert checkpoint.extra["world_size"] == 2
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] <= step  # every episode up to the stop was exchanged first

    # One process cannot continue a run of two: one clear line, nothing changed.
    before = (run_dir / "run.json").read_bytes()
    single = subprocess.run(
        [sys.executable, "-m", "rl_training", "--resume", str(run_dir), "--total-timesteps",
         str(step + 1024)], env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert single.returncode == 2
    assert single.stderr.strip().splitlines() == [
        f"rl-train: error: run {run_dir} was trained by 2 process(es) and this launch has 1; "
        "resume it with the same number (torchrun --nproc_per_node, --nnodes)"
    ]
    assert (run_dir / "run.json").read_bytes() == before

    # Two processes continue it in place.
    total = step + 1024
    proc = launch("-m", "rl_training", "--resume", str(run_dir), "--total-timesteps", str(total),
                  "--quiet", cwd=tmp_path)  # fmt: skip
    code, out, err = finish(proc)
    assert code == 0, err[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert [r["step"] for r in info["resumes"]] == [step]
    assert info["summary"]["steps"] == total
    assert info["summary"]["replicas"]["max_weight_difference"] == 0.0
    rows = assert_sinks_agree(run_dir)
    assert [r["step"] for r in rows if "loss/policy" in r][-1] == total


def test_a_rank_that_fails_ends_every_rank_and_the_run_failed(tmp_path):
    """One rank crashing ends every rank promptly and marks the run failed."""
    start = time.monotonic()
    proc = launch("-m", "rl_training", "--algo", "ppo", "--env-id",
                  "dist_envs:CrashOnRankOne-v0", "--total-timesteps", "5000000", "--device",
                  "cpu", "--output-dir", "runs", "--quiet", *TINY["ppo"],
                  cwd=tmp_path)  # fmt: skip
    code, out, err = finish(proc, timeout=90)
    elapsed = time.monotonic() - start
    assert code != 0
    assert "dist_envs: rank 1 fails on purpose" in err
    run_dir = only_run(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed"
    assert elapsed < 60, elapsed
    assert RunLock(run_dir).acquire()  # no rank left holding the run


CUSTOM_LOOP = textwrap.dedent(
    """
    import json
    import sys

    import torch.distributed as dist

    from rl_training import create_run, reduce_metrics

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sinks = {"log_sinks": sys.argv[2]} if len(sys.argv) > 2 else {}
    with create_run("custom", {"lr": 0.1}, output_dir=sys.argv[1], **sinks) as run:
        for step in range(3):
            local = {"loss": float(rank + step), "rank": float(rank)}
            run.logger.log_metrics(reduce_metrics(local), step)
            if rank == 1:  # a rank that logs more than the others blocks nobody
                run.logger.log_metrics({"only_rank_1": 1.0}, step)
        said = [rank, run.writer, str(run.run_dir), reduce_metrics({"n": 1}, op="sum")["n"]]
    with open(f"{sys.argv[1]}.rank{rank}.json", "w") as file:  # one file a rank
        json.dump(said, file)
    dist.destroy_process_group()
    """
)


def test_create_run_under_torchrun_writes_once_and_reduce_metrics_averages(tmp_path):
    """create_run under torchrun: rank 0 writes, every rank gets the run, metrics are averaged."""
    script = tmp_path / "loop.py"
    script.write_text(CUSTOM_LOOP)
    code, out, err = finish(launch(str(script), str(tmp_path / "runs"), cwd=tmp_path), 90)
    assert code == 0, err[-3000:]
    run_dir = only_run(tmp_path)
    said = [json.loads((tmp_path / f"runs.rank{r}.json").read_text()) for r in (0, 1)]
    assert said == [[0, True, str(run_dir), 2.0], [1, False, str(run_dir), 2.0]]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["step"], r["loss"], r["rank"]) for r in rows] == [(0, 0.5, 0.5), (1, 1.5, 0.5),
                                                                 (2, 2.5, 0.5)]  # fmt: skip
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2


# -- in one process ----------------------------------------------------------------------


def test_launch_world_reads_torchrun_variables_and_names_bad_ones():
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK are read; a bad value is named in the error."""
    assert launch_world({}) == World()
    assert launch_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    with pytest.raises(ValueError, match=r"RANK: 'x' is not a valid torchrun setting"):
        launch_world({"WORLD_SIZE": "2", "RANK": "x"})
    with pytest.raises(ValueError, match=r"RANK: 2 is not below WORLD_SIZE 2"):
        launch_world({"WORLD_SIZE": "2", "RANK": "2"})


def test_devices_under_torchrun():
    """Under torchrun each process gets its own device; cuda:N or absent CUDA is refused."""
    two = World(rank=1, size=2, local_rank=1)
    assert resolve_device("auto", two) == torch.device("cpu")  # no CUDA here
    assert resolve_device("cpu", two) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device: 'cuda:0' under torchrun: each process"):
        resolve_device("cuda:0", two)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"CUDA is not available"):
            resolve_device("cuda", two)


def test_plan_refuses_algorithms_without_distributed_support(tmp_path):
    """An algorithm without torchrun support is refused for several processes, accepted for one."""
    config = TrainConfig(algo="sac", env_id="Pendulum-v1", seed=0, total_timesteps=100,
                         output_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match=r"algo: 'sac' does not train on several processes"):
        resolve_plan(config, World(rank=0, size=2))
    assert resolve_plan(config, World()).world == World()


def test_reduce_metrics_in_one_process_and_bad_input():
    """reduce_metrics works without torchrun and names a bad op, tensor or value."""
    assert reduce_metrics({"a": 1, "b": torch.tensor(2.5)}) == {"a": 1.0, "b": 2.5}
    with pytest.raises(ValueError, match=r"op: 'median' is not one of 'mean', 'sum'"):
        reduce_metrics({"a": 1.0}, op="median")
    with pytest.raises(ValueError, match=r"b: a tensor of 2 elements is not one number"):
        reduce_metrics({"b": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"c: a str is not a number"):
        reduce_metrics({"c": "1"})


def test_one_process_runs_record_world_size_one(tmp_path):
    """A one-process run records world_size 1 in run.json and config.json."""
    from rl_training import train

    hp = {"num_envs": 2, "n_steps": 32, "batch_size": 32}
    result = train(TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=128,
                               output_dir=tmp_path, device="cpu", log_sinks=["json"],
                               hyperparams=hp))  # fmt: skip
    assert json.loads((result.run_dir / "run.json").read_text())["world_size"] == 1
    assert json.loads((result.run_dir / "config.json").read_text())["world_size"] == 1


def test_ctrl_c_in_the_terminal_stops_every_rank_gracefully(tmp_path):
    """A terminal's Ctrl-C reaches the launcher's process group (torchrun starts each
    rank in a session of its own and passes the signal on once): every rank checkpoints."""
    proc = launch("-m", "rl_training", "--algo", "ppo", "--env-id", "CartPole-v1",
                  "--total-timesteps", "5000000", "--device", "cpu", "--output-dir", "runs",
                  "--quiet", *TINY["ppo"], cwd=tmp_path)  # fmt: skip
    run_dir = _wait_for_row(tmp_path / "runs", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
    finish(proc, timeout=60)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    # The periodic checkpoint is 500,000 steps away: this one is the stop's.
    assert load_checkpoint(run_dir / "checkpoint.pt").step == info["summary"]["steps"] > 0


def test_train_in_processes_torchrun_started(tmp_path):
    """train() called from a script under torchrun trains one run across the processes."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(
        """
        import json, sys
        from rl_training import TrainConfig, train

        config = TrainConfig(algo="a2c", env_id="CartPole-v1", seed=1, total_timesteps=640,
                             output_dir=sys.argv[1], device="cpu", log_sinks=["json"],
                             hyperparams={"num_envs": 2, "n_steps": 8})
        result = train(config)
        import os
        with open(f"{sys.argv[1]}.rank{os.environ['RANK']}.json", "w") as file:
            json.dump([str(result.run_dir), result.steps, result.episodes], file)
        """
    ))  # fmt: skip
    code, out, err = finish(launch(str(script), str(tmp_path / "runs"), cwd=tmp_path), 90)
    assert code == 0, err[-3000:]
    run_dir = only_run(tmp_path)
    said = [json.loads((tmp_path / f"runs.rank{r}.json").read_text()) for r in (0, 1)]
    assert said[0] == said[1]  # every rank knows the run, its global steps and episodes
    assert said[0][:2] == [str(run_dir), 640]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["summary"]["episodes"] == said[0][2]
    assert not (run_dir / "tensorboard").exists()  # json only: no empty directory


def rl_train_ranks(*args: str, cwd: Path) -> subprocess.Popen:
    """``rl-train --nproc-per-node 2 ...`` in its own process group, as a terminal runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "rl_training", "--nproc-per-node", "2", *args], cwd=cwd,
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def test_nproc_per_node_trains_one_run_on_two_ranks(tmp_path):
    """rl-train --nproc-per-node 2 is torchrun --standalone: one run, world size 2, exit 0."""
    proc = rl_train_ranks("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", "512",
                          "--device", "cpu", "--output-dir", "runs", "--quiet", *TINY["ppo"],
                          cwd=tmp_path)  # fmt: skip
    code, out, err = finish(proc)
    assert code == 0, err[-3000:]
    run_dir = only_run(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2
    assert sum(line.startswith("run ") for line in out.splitlines()) == 1, out
    assert "Traceback" not in err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_nproc_per_node_stops_cleanly_on_ctrl_c_and_sigterm(tmp_path, signum, code):
    """Ctrl-C or SIGTERM to the launcher: every rank checkpoints, exit 130 / 143, one line."""
    proc = rl_train_ranks("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps",
                          "5000000", "--device", "cpu", "--output-dir", "runs", "--quiet",
                          *TINY["ppo"], cwd=tmp_path)  # fmt: skip
    run_dir = _wait_for_row(tmp_path / "runs", proc)
    os.killpg(proc.pid, signum)  # what a terminal (or a scheduler) does
    returncode, out, err = finish(proc, timeout=90)
    assert returncode == code, err[-3000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "interrupted" in err and run_dir.name in out
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert load_checkpoint(run_dir / "checkpoint.pt").step == info["summary"]["steps"] > 0


def test_nproc_per_node_bad_input_is_rank_zeros_one_line(tmp_path):
    """An algorithm without torchrun support: rank 0's one line, exit 2, no run directory."""
    proc = rl_train_ranks("--algo", "dqn", "--env-id", "CartPole-v1", "--total-timesteps",
                          "1000", "--output-dir", "runs", cwd=tmp_path)  # fmt: skip
    code, _, err = finish(proc, timeout=90)
    assert code == 2, err[-3000:]
    assert [line for line in err.splitlines() if line.strip()] == [
        "rl-train: error: algo: 'dqn' does not train on several processes yet "
        "(WORLD_SIZE=2); run it in one process, or use ppo or a2c under torchrun"
    ]
    assert not (tmp_path / "runs").exists()


def test_a_background_sink_under_torchrun_is_rank_zeros_and_gets_every_row(
    tmp_path, install_plugin
):
    """create_run under torchrun with a background sink: rank 0 alone feeds it, on its own
    thread; every row reaches it by close, and run.json counts them."""
    install_plugin("rl-training-slow", SLOW_SINK_PLUGIN.replace("DELAY", "0.01"))
    script = tmp_path / "loop.py"
    script.write_text(CUSTOM_LOOP)
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env["PYTHONPATH"]])
    proc = subprocess.Popen(
        [*TORCHRUN, str(script), str(tmp_path / "runs"), "json,slow"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    code, _, err = finish(proc, 90)
    assert code == 0, err[-3000:]
    run_dir = only_run(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["sinks"]["slow"] == {
        "delivery": "background", "calls": 4, "dropped": 0, "undelivered": 0, "error": None
    }  # fmt: skip
    assert (run_dir / "slow.txt").read_text() == "0 1 2 finished"
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2]


def test_normalize_obs_statistics_are_merged_across_ranks(tmp_path):
    """Every rank's observations enter one set of statistics, the same on both ranks:
    the model's count is both ranks' observations."""
    from rl_training.trainers.checkpoint import load_checkpoint, load_model

    proc = rl_train_ranks("--algo", "ppo", "--env-id", "Pendulum-v1", "--total-timesteps", "512",
                          "--device", "cpu", "--output-dir", "runs", "--quiet", *TINY["ppo"],
                          "--hp", "normalize_obs=true", "--hp", "normalize_reward=true",
                          cwd=tmp_path)  # fmt: skip
    code, _, err = finish(proc)
    assert code == 0, err[-3000:]
    run_dir = only_run(tmp_path)
    stats = load_model(run_dir / "model.pt").state_dicts["obs_norm"]
    # 2 ranks x 2 envs: the first resets, then 512 / 4 = 128 vector steps
    assert stats["count"].item() == pytest.approx(4 * (1 + 128) + 1e-4)
    session = load_checkpoint(run_dir / "checkpoint.pt").trainer["session"]
    torch.testing.assert_close(session["obs_norm"]["mean"], stats["mean"])
