"""PPO through rl_training.train on tiny budgets: what it logs, saves and reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_training import TrainConfig
from rl_training.runtime.device import resolve_device
from rl_training.trainers import evaluate, train
from trainer_checks import check_logged, tiny_run, without_wall_clock

PPO_TINY = {"num_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 2}
PPO_KEYS = {
    "loss/policy",
    "loss/value",
    "loss/entropy",
    "train/approx_kl",
    "train/clip_fraction",
    "train/explained_variance",
    "train/learning_rate",
    "train/n_updates",
}


def test_ppo_discrete_logs_every_metric_to_both_sinks(tmp_path):
    """A tiny CartPole run logs episodes, losses, diagnostics and sps, in step order."""
    result = tiny_run(tmp_path, "ppo", "CartPole-v1", 256, **PPO_TINY)
    assert result.steps == 256
    rows = check_logged(result, PPO_KEYS)
    updates = [row for row in rows if "loss/policy" in row]
    assert [row["step"] for row in updates] == [64, 128, 192, 256]
    assert [row["train/n_updates"] for row in updates] == [1, 2, 3, 4]
    lrs = [row["train/learning_rate"] for row in updates]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-3)
    assert result.episodes == sum("episode/return" in row for row in rows)
    assert result.mean_return > 0 and result.wall_time_s > 0


def test_ppo_continuous_actions(tmp_path):
    """Pendulum (Box actions) trains, logs the policy std, and evaluates within bounds."""
    result = tiny_run(tmp_path, "ppo", "Pendulum-v1", 400, **PPO_TINY)
    check_logged(result, PPO_KEYS | {"train/std"})
    evaluation = evaluate(result.run_dir, n_episodes=2)
    assert len(evaluation.returns) == 2 and evaluation.lengths == [200, 200]
    assert all(r < 0 for r in evaluation.returns)


def test_ppo_last_rollout_is_cut_to_the_budget(tmp_path):
    """A budget that is not a multiple of the rollout size is still met, not overshot."""
    result = tiny_run(tmp_path, "ppo", "CartPole-v1", 100, **PPO_TINY)
    assert result.steps == 100


def test_ppo_is_reproducible_on_cpu(tmp_path):
    """Same config and seed: identical logged values apart from wall-clock fields."""
    first = tiny_run(tmp_path / "a", "ppo", "CartPole-v1", 192, seed=3, **PPO_TINY)
    second = tiny_run(tmp_path / "b", "ppo", "CartPole-v1", 192, seed=3, **PPO_TINY)
    other = tiny_run(tmp_path / "c", "ppo", "CartPole-v1", 192, seed=4, **PPO_TINY)
    rows = [check_logged(r, PPO_KEYS) for r in (first, second, other)]
    assert without_wall_clock(rows[0]) == without_wall_clock(rows[1])
    assert without_wall_clock(rows[0]) != without_wall_clock(rows[2])
    a = torch.load(first.run_dir / "model.pt", weights_only=True)["state_dicts"]["agent"]
    b = torch.load(second.run_dir / "model.pt", weights_only=True)["state_dicts"]["agent"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_rebuilds_the_saved_policy(tmp_path):
    """evaluate() reloads model.pt; deterministic runs with one seed repeat exactly."""
    result = tiny_run(tmp_path, "ppo", "CartPole-v1", 128, **PPO_TINY)
    first = evaluate(result.run_dir, n_episodes=3, seed=5)
    again = evaluate(result.run_dir, n_episodes=3, seed=5)
    assert first.returns == again.returns and len(first.returns) == 3
    assert first.mean_return == pytest.approx(np.mean(first.returns))
    assert first.lengths == [int(r) for r in first.returns]  # CartPole pays 1 per step
    stochastic = evaluate(result.run_dir, n_episodes=3, deterministic=False, seed=5)
    assert len(stochastic.returns) == 3


def test_evaluate_bad_input(tmp_path):
    """A directory without a model, or a bad episode count, is a clear error."""
    with pytest.raises(FileNotFoundError, match="model.pt"):
        evaluate(tmp_path)
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate(tmp_path, n_episodes=0)


def test_device_resolution():
    """'auto' follows torch.cuda.is_available(); 'cpu' is the CPU; CUDA absent is a ValueError."""
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        for spelling in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match=f"'{spelling}'.*CUDA is not available"):
                resolve_device(spelling)
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")


@pytest.mark.gpu
def test_ppo_trains_on_cuda(tmp_path):
    """On a CUDA machine, a tiny run trains with everything on the GPU."""
    config = TrainConfig(
        algo="ppo",
        env_id="CartPole-v1",
        seed=0,
        total_timesteps=128,
        output_dir=tmp_path,
        device="cuda",
        hyperparams=PPO_TINY,
    )
    result = train(config)
    assert result.steps == 128


def test_cuda_when_absent_fails_before_disk(tmp_path):
    """train() with device='cuda' and no CUDA raises ValueError and writes nothing."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = TrainConfig(
        algo="ppo",
        env_id="CartPole-v1",
        seed=0,
        total_timesteps=64,
        output_dir=tmp_path / "runs",
        device="cuda",
    )
    with pytest.raises(ValueError, match="CUDA"):
        train(config)
    assert not (tmp_path / "runs").exists()


class ExplodingEnv(gym.Env):
    """A real environment that fails after a few steps, as a buggy user env would."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.total_steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        self.total_steps += 1
        if self.total_steps > 40:
            raise RuntimeError("simulator diverged")
        return np.zeros(3, dtype=np.float32), 1.0, self.total_steps % 10 == 0, False, {}


gym.register("rl_training_tests/Exploding-v0", entry_point=ExplodingEnv, max_episode_steps=100)


def test_training_error_closes_the_run_as_failed(tmp_path):
    """An error mid-training propagates; run.json says 'failed' and the metrics so far remain."""
    config = TrainConfig(
        algo="ppo",
        env_id="rl_training_tests/Exploding-v0",
        seed=0,
        total_timesteps=500,
        output_dir=tmp_path,
        device="cpu",
        hyperparams={"num_envs": 1, "n_steps": 16, "batch_size": 16},
    )
    with pytest.raises(RuntimeError, match="simulator diverged"):
        train(config)
    (run_dir,) = Path(tmp_path).iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["episode/length"] for row in rows if "episode/length" in row] == [10, 10, 10, 10]
