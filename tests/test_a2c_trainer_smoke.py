"""A2C through rl_training.train on tiny budgets: what it logs, saves and reproduces."""

from __future__ import annotations

from rl_training.trainers import evaluate
from trainer_checks import check_logged, tiny_run, without_wall_clock

A2C_TINY = {"num_envs": 4, "n_steps": 5, "log_interval": 5}
A2C_KEYS = {
    "loss/policy",
    "loss/value",
    "loss/entropy",
    "train/explained_variance",
    "train/learning_rate",
    "train/n_updates",
}


def test_a2c_discrete_logs_every_metric_to_both_sinks(tmp_path):
    """A tiny CartPole run logs losses and sps every log_interval updates and after the last."""
    result = tiny_run(tmp_path, "a2c", "CartPole-v1", 240, **A2C_TINY)
    assert result.steps == 240
    rows = check_logged(result, A2C_KEYS)
    updates = [row for row in rows if "loss/policy" in row]
    assert [row["train/n_updates"] for row in updates] == [5, 10, 12]
    assert [row["step"] for row in updates] == [100, 200, 240]


def test_a2c_continuous_actions(tmp_path):
    """Pendulum (Box actions) trains and evaluates."""
    result = tiny_run(tmp_path, "a2c", "Pendulum-v1", 800, **A2C_TINY)
    check_logged(result, A2C_KEYS | {"train/std"})
    assert evaluate(result.run_dir, n_episodes=1).lengths == [200]


def test_a2c_is_reproducible_on_cpu(tmp_path):
    """Same config and seed: identical logged values apart from wall-clock fields."""
    runs = [
        tiny_run(tmp_path / name, "a2c", "CartPole-v1", 200, seed=1, **A2C_TINY) for name in "ab"
    ]
    first, second = (check_logged(r, A2C_KEYS) for r in runs)
    assert without_wall_clock(first) == without_wall_clock(second)


def test_a2c_anneals_the_learning_rate_when_asked(tmp_path):
    """anneal_lr=True decays the logged learning rate towards zero."""
    result = tiny_run(tmp_path, "a2c", "CartPole-v1", 200, anneal_lr=True, **A2C_TINY)
    lrs = [
        row["train/learning_rate"] for row in check_logged(result, A2C_KEYS) if "loss/policy" in row
    ]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
