"""SAC through rl_training.train on tiny budgets: what it logs, saves and reproduces."""

from __future__ import annotations

import pytest

from rl_training import TrainConfig
from rl_training.trainers import evaluate, train
from trainer_checks import check_logged, tiny_run, without_wall_clock

SAC_TINY = {"net_arch": [32, 32], "learning_starts": 50, "batch_size": 32, "log_interval": 100}
SAC_KEYS = {"loss/q", "loss/actor", "loss/alpha", "train/alpha", "train/n_updates"}


def test_sac_logs_every_metric_to_both_sinks(tmp_path):
    """A tiny Pendulum run logs episodes, critic/actor/alpha losses, alpha and sps."""
    result = tiny_run(tmp_path, "sac", "Pendulum-v1", 400, **SAC_TINY)
    assert result.steps == 400
    rows = check_logged(result, SAC_KEYS)
    updates = [row for row in rows if "train/n_updates" in row]
    assert updates[-1]["train/n_updates"] == 400 - 50 + 1
    alphas = [row["train/alpha"] for row in updates]
    assert alphas[0] < 1.0  # the temperature is being learned


def test_sac_fixed_temperature(tmp_path):
    """A numeric ent_coef is used as is and not learned."""
    result = tiny_run(tmp_path, "sac", "Pendulum-v1", 250, ent_coef=0.2, **SAC_TINY)
    rows = check_logged(result, SAC_KEYS - {"loss/alpha"})
    alphas = [row["train/alpha"] for row in rows if "train/alpha" in row]
    assert alphas and alphas == pytest.approx([0.2] * len(alphas))
    assert not any("loss/alpha" in row for row in rows)


def test_sac_rejects_discrete_actions_before_disk(tmp_path):
    """SAC on CartPole (Discrete actions) is a ValueError naming both, and no run directory."""
    config = TrainConfig(
        algo="sac", env_id="CartPole-v1", seed=0, total_timesteps=100, output_dir=tmp_path / "runs"
    )
    with pytest.raises(ValueError, match=r"'sac'.*'CartPole-v1'.*Discrete.*Box"):
        train(config)
    assert not (tmp_path / "runs").exists()


def test_sac_is_reproducible_and_evaluates(tmp_path):
    """Same seed, same logged values; the saved actor evaluates within the action bounds."""
    runs = [tiny_run(tmp_path / n, "sac", "Pendulum-v1", 250, seed=5, **SAC_TINY) for n in "ab"]
    first, second = (check_logged(r, SAC_KEYS) for r in runs)
    assert without_wall_clock(first) == without_wall_clock(second)
    evaluation = evaluate(runs[0].run_dir, n_episodes=1)
    assert evaluation.lengths == [200] and evaluation.returns[0] < 0
    assert evaluate(runs[0].run_dir, n_episodes=1, deterministic=False).lengths == [200]
