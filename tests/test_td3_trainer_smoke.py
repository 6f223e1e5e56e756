"""TD3 through rl_training.train on tiny budgets: what it logs, saves and reproduces."""

from __future__ import annotations

import pytest

from rl_training import TrainConfig
from rl_training.trainers import evaluate, train
from trainer_checks import check_logged, tiny_run, without_wall_clock

TD3_TINY = {"net_arch": [32, 32], "learning_starts": 50, "batch_size": 32, "log_interval": 100}
TD3_KEYS = {"loss/q", "loss/actor", "train/n_updates"}


def test_td3_logs_every_metric_to_both_sinks(tmp_path):
    """A tiny Pendulum run logs episodes, the critic loss, the delayed actor loss and sps."""
    result = tiny_run(tmp_path, "td3", "Pendulum-v1", 400, **TD3_TINY)
    assert result.steps == 400
    rows = check_logged(result, TD3_KEYS)
    assert [row["train/n_updates"] for row in rows if "train/n_updates" in row][-1] == 351


def test_td3_rejects_discrete_actions_before_disk(tmp_path):
    """TD3 on CartPole (Discrete actions) is a ValueError naming both, and no run directory."""
    config = TrainConfig(
        algo="td3", env_id="CartPole-v1", seed=0, total_timesteps=100, output_dir=tmp_path / "runs"
    )
    with pytest.raises(ValueError, match=r"'td3'.*'CartPole-v1'.*Discrete.*Box"):
        train(config)
    assert not (tmp_path / "runs").exists()


def test_td3_is_reproducible_and_evaluates(tmp_path):
    """Same seed, same logged values; deterministic evaluation repeats exactly."""
    runs = [tiny_run(tmp_path / n, "td3", "Pendulum-v1", 250, seed=7, **TD3_TINY) for n in "ab"]
    first, second = (check_logged(r, TD3_KEYS) for r in runs)
    assert without_wall_clock(first) == without_wall_clock(second)
    a, b = (evaluate(r.run_dir, n_episodes=1, seed=3) for r in runs)
    assert a.returns == b.returns and a.lengths == [200]
