"""DQN through rl_training.train on tiny budgets: what it logs, saves and reproduces."""

from __future__ import annotations

import pytest

from rl_training import TrainConfig
from rl_training.trainers import evaluate, train
from trainer_checks import check_logged, tiny_run, without_wall_clock

DQN_TINY = {
    "net_arch": [32, 32],
    "learning_starts": 50,
    "batch_size": 16,
    "train_freq": 4,
    "gradient_steps": 2,
    "target_update_interval": 20,
    "log_interval": 100,
}
DQN_KEYS = {"loss/q", "train/q_mean", "train/epsilon", "train/n_updates"}


def test_dqn_logs_every_metric_to_both_sinks(tmp_path):
    """A tiny CartPole run logs episodes, the Q loss, mean Q, epsilon and sps."""
    result = tiny_run(tmp_path, "dqn", "CartPole-v1", 400, **DQN_TINY)
    assert result.steps == 400
    rows = check_logged(result, DQN_KEYS)
    train_rows = [row for row in rows if "train/epsilon" in row]
    assert [row["step"] for row in train_rows] == [100, 200, 300, 400]
    eps = [row["train/epsilon"] for row in train_rows]
    assert eps == sorted(eps, reverse=True) and eps[-1] == pytest.approx(0.04)
    # 350 steps past learning_starts, a phase every 4 steps, 2 gradient steps each
    assert train_rows[-1]["train/n_updates"] == 2 * (400 // 4 - 50 // 4)


def test_dqn_with_parallel_envs(tmp_path):
    """num_envs > 1 steps every env per iteration and still meets the budget."""
    result = tiny_run(tmp_path, "dqn", "CartPole-v1", 400, num_envs=4, **DQN_TINY)
    assert result.steps == 400
    check_logged(result, DQN_KEYS)


def test_dqn_rejects_continuous_actions_before_disk(tmp_path):
    """DQN on Pendulum (Box actions) is a ValueError naming both, and no run directory."""
    config = TrainConfig(
        algo="dqn", env_id="Pendulum-v1", seed=0, total_timesteps=100, output_dir=tmp_path / "runs"
    )
    with pytest.raises(ValueError, match=r"'dqn'.*'Pendulum-v1'.*Box.*Discrete"):
        train(config)
    assert not (tmp_path / "runs").exists()


def test_dqn_is_reproducible_and_evaluates(tmp_path):
    """Same seed, same logged values; the saved Q-network evaluates repeatably."""
    runs = [tiny_run(tmp_path / n, "dqn", "CartPole-v1", 300, seed=2, **DQN_TINY) for n in "ab"]
    first, second = (check_logged(r, DQN_KEYS) for r in runs)
    assert without_wall_clock(first) == without_wall_clock(second)
    a, b = (evaluate(r.run_dir, n_episodes=2, seed=9) for r in runs)
    assert a.returns == b.returns
    assert len(evaluate(runs[0].run_dir, n_episodes=2, deterministic=False).returns) == 2
