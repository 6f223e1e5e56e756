"""What a practitioner uses around training: create_run for any loop, evaluation during
training, the best model, policies that act, the run summary, the CLI around them."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from rl_training import TrainConfig, create_run, evaluate, load_policy, train
from rl_training.testing import assert_sinks_agree, read_jsonl, read_scalars, without_wall_clock

RL_TRAIN = [sys.executable, "-m", "rl_training"]
PPO_TINY = {"num_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 2}


def ppo(tmp_path, env_id="CartPole-v1", total=256, **fields) -> TrainConfig:
    """A tiny CPU PPO config."""
    return TrainConfig(algo="ppo", env_id=env_id, seed=1, total_timesteps=total,
                       output_dir=tmp_path / "runs", device="cpu", hyperparams=PPO_TINY,
                       **fields)  # fmt: skip


# -- create_run ---------------------------------------------------------------------------


@dataclasses.dataclass
class MyConfig:
    """A user's own config, as a dataclass."""

    lr: float = 3e-4
    layers: tuple[int, ...] = (64, 64)


def test_create_run_logs_a_custom_loop_through_both_sinks(tmp_path):
    """Any training loop: its rows reach JSONL and TensorBoard; its config is logged once."""
    with create_run("my-algo.v2", MyConfig(), output_dir=tmp_path) as run:
        for step in range(0, 50, 10):
            run.logger.log_metrics({"loss/custom": 1.0 / (step + 1), "episode/return": step}, step)
    assert run.run_dir.parent == tmp_path and run.run_dir.name.startswith("my-algo.v2-")
    rows = assert_sinks_agree(run.run_dir)
    assert [row["step"] for row in rows] == [0, 10, 20, 30, 40]
    assert json.loads(run.run_context.config_path.read_text()) == {"layers": [64, 64], "lr": 3e-4}
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["name"] == run.run_dir.name
    assert "algo" not in info and info["log_sinks"] == ["json", "tensorboard"]


def test_create_run_closes_failed_on_an_exception_and_refuses_bad_input(tmp_path):
    """An exception closes it 'failed'; a bad name, config or sink is a ValueError, no dir."""
    with pytest.raises(ZeroDivisionError), create_run("x", {"a": 1}, output_dir=tmp_path) as run:
        1 / 0  # noqa: B018
    assert json.loads((run.run_dir / "run.json").read_text())["status"] == "failed"
    out = tmp_path / "fresh"
    for kwargs, fragment in [
        ({"name": "has space"}, "'has space' is not a run name"),
        ({"name": "ok", "config": [1, 2]}, "a list is not a mapping"),
        ({"name": "ok", "log_sinks": "json,nosuch"}, "unknown sink 'nosuch'; available sinks"),
        ({"name": "ok", "run_suffix": "a/b"}, "run_suffix"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            create_run(output_dir=out, **kwargs)
    assert not out.exists()


def test_create_run_with_json_only_leaves_no_tensorboard_directory(tmp_path):
    """tensorboard/ is made with the run and removed at close when no sink wrote in it."""
    with create_run("plain", output_dir=tmp_path, log_sinks="json") as run:
        run.logger.log_metrics({"x": 1}, 0)
    assert sorted(p.name for p in run.run_dir.iterdir()) == [
        "config.json", "metrics.jsonl", "run.json"
    ]  # fmt: skip


# -- evaluation, best model, return_mean, summary -----------------------------------------


def test_evaluation_rows_best_model_and_summary(tmp_path):
    """eval/* rows at every eval_every steps in both sinks; best_model.pt is the best one."""
    result = train(ppo(tmp_path, total=320, eval_every=128, eval_episodes=3))
    rows = assert_sinks_agree(result.run_dir)
    evals = [row for row in rows if "eval/mean_return" in row]
    assert [row["step"] for row in evals] == [128, 256]
    for row in evals:
        assert {"eval/mean_return", "eval/std_return", "eval/mean_length"} == set(row) - {
            "step", "time"}  # fmt: skip
    best = max(row["eval/mean_return"] for row in evals)
    replay = evaluate(result.run_dir, n_episodes=3, seed=1 + 1_000_003, which="best")
    assert replay.mean_return == pytest.approx(best)  # the same episodes, the kept model
    summary = json.loads((result.run_dir / "run.json").read_text())["summary"]
    assert summary["steps"] == 320 and summary["episodes"] == result.episodes
    assert summary["best_eval_return"] == pytest.approx(best)
    assert summary["sps"] > 0 and summary["wall_time_s"] > 0
    returns = [row["episode/return"] for row in rows if "episode/return" in row]
    assert summary["mean_return"] == pytest.approx(np.mean(returns[-100:]))


def test_evaluation_does_not_change_training(tmp_path):
    """With evaluation on, the training rows are the same as with it off (it uses a copy)."""
    plain = train(ppo(tmp_path / "off", total=320))
    evaluated = train(ppo(tmp_path / "on", total=320, eval_every=128, eval_episodes=2))
    rows = [without_wall_clock(read_jsonl(r.run_dir / "metrics.jsonl")) for r in (plain, evaluated)]
    assert rows[0] == [row for row in rows[1] if "eval/mean_return" not in row]


def test_episode_rows_carry_the_mean_of_the_last_100_returns(tmp_path):
    """episode/return_mean in each episode row is the mean of the last 100 returns so far."""
    barely_learning = {**PPO_TINY, "learning_rate": 1e-7}  # short episodes: many of them
    result = train(dataclasses.replace(ppo(tmp_path, total=3072), hyperparams=barely_learning))
    episodes = [
        row for row in read_jsonl(result.run_dir / "metrics.jsonl") if "episode/return" in row
    ]
    assert len(episodes) > 100
    returns = [row["episode/return"] for row in episodes]
    for i, row in enumerate(episodes):
        window = returns[max(0, i - 99) : i + 1]
        assert row["episode/return_mean"] == pytest.approx(math.fsum(window) / len(window))
    assert "episode/return_mean" in read_scalars(result.run_dir / "tensorboard")


# -- policies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "env_id"),
    [
        ("ppo", "CartPole-v1"),
        ("dqn", "CartPole-v1"),
        ("ppo", "Pendulum-v1"),
        ("sac", "Pendulum-v1"),
    ],
)
def test_policy_predicts_single_and_batched_observations(tmp_path, algo, env_id):
    """predict() takes one observation or a batch and gives actions the env accepts."""
    hp = PPO_TINY if algo == "ppo" else {"learning_starts": 50, "batch_size": 16, "net_arch": [16]}
    result = train(TrainConfig(algo=algo, env_id=env_id, seed=0, total_timesteps=200,
                               output_dir=tmp_path, device="cpu", hyperparams=hp))  # fmt: skip
    import gymnasium as gym

    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    batch = np.stack([env.observation_space.sample() for _ in range(5)])
    for which in ("final", "checkpoint"):
        policy = load_policy(result.run_dir, which)
        action = policy.predict(obs)
        assert env.action_space.contains(action), (which, action)
        actions = policy.predict(batch)
        assert len(actions) == 5 and all(env.action_space.contains(a) for a in actions)
        assert np.array_equal(policy.predict(batch), actions)  # deterministic by default
        env.step(action)
    with pytest.raises(ValueError, match=r"shape \(2, 2\) is neither an observation"):
        policy.predict(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="'latest' is not one of"):
        load_policy(result.run_dir, "latest")
    with pytest.raises(FileNotFoundError, match="best_model.pt"):
        load_policy(result.run_dir, "best")  # no evaluation ran


# -- command line -------------------------------------------------------------------------


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*RL_TRAIN, *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)  # fmt: skip


def test_cli_evaluates_a_run_and_trains_with_evaluation(tmp_path):
    """--eval-every/--eval-episodes log eval rows; --evaluate RUN_DIR prints mean +- std."""
    result = cli("--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", 256,
                 "--output-dir", tmp_path, "--quiet", "--eval-every", 128, "--eval-episodes", 2,
                 *[a for hp in ("num_envs=2", "n_steps=32") for a in ("--hp", hp)])  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run_dir,) = tmp_path.iterdir()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows if "eval/mean_return" in row] == [128, 256]
    assert (run_dir / "best_model.pt").is_file()
    shown = cli("--evaluate", run_dir, "--episodes", 3)
    assert shown.returncode == 0, shown.stderr
    expected = evaluate(run_dir, n_episodes=3)
    assert f"mean return {expected.mean_return:.2f} +- {expected.std_return:.2f} over 3" in (
        shown.stdout)  # fmt: skip
    missing = cli("--evaluate", tmp_path, "--episodes", 3)
    assert missing.returncode == 2 and "model.pt" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1


def test_cli_version_json_and_hyperparameter_descriptions():
    """--version prints the version; --json alone is refused; --list-hyperparams explains."""
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("rl-train ")
    alone = cli("--json")
    assert alone.returncode == 2 and "--json goes with --list-sinks" in alone.stderr
    listing = cli("--algo", "td3", "--list-hyperparams")
    assert listing.returncode == 0
    assert "Twin Delayed DDPG" in listing.stdout
    assert any(line.split()[0] == "policy_delay=2" and "Critic updates per actor" in line
               for line in listing.stdout.splitlines())  # fmt: skip


def test_the_cleanrl_style_example_logs_through_create_run(tmp_path):
    """examples/reinforce_cartpole.py, a plain PyTorch loop, writes a run both sinks agree on."""
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "reinforce_cartpole.py"
    result = subprocess.run([sys.executable, str(script), "--total-timesteps", "600"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / result.stdout.strip()
    rows = assert_sinks_agree(run_dir)
    assert rows[-1]["step"] >= 600 and all("loss/policy" in row for row in rows)
    assert json.loads((run_dir / "config.json").read_text())["total_timesteps"] == 600
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
