"""Every trainer through rl_training.train on tiny budgets: what it logs, saves and reproduces.

Parametrised over the algorithms; learning itself is for benchmarks/bench_learning.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_training import CompositeLogger, TrainConfig
from rl_training.registry import ALGOS
from rl_training.runtime.device import resolve_device
from rl_training.runtime.plan import resolve_plan
from rl_training.testing import assert_sinks_agree, without_wall_clock
from rl_training.trainers import TrainResult, evaluate, train
from rl_training.trainers.session import Session, saved_modules, trainer_class

ON_POLICY_KEYS = {"loss/policy", "loss/value", "loss/entropy", "train/explained_variance",
                  "train/learning_rate", "train/n_updates"}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """A tiny run of one algorithm and what it must log."""

    algo: str
    env_id: str
    steps: int
    hp: dict[str, Any]
    keys: set[str]
    """Training-row keys besides the episode keys and time/sps."""
    rows_at: list[int]
    """Steps of the training rows: each log_interval multiple (first iteration past it), the end."""
    box: bool = field(default=False)


CASES = {
    "ppo": Case("ppo", "CartPole-v1", 256, {"num_envs": 2, "n_steps": 32, "batch_size": 32,
                "n_epochs": 2},
                ON_POLICY_KEYS | {"train/approx_kl", "train/clip_fraction", "train/clip_range"},
                [64, 128, 192, 256]),
    "ppo-box": Case("ppo", "Pendulum-v1", 400, {"num_envs": 2, "n_steps": 32, "batch_size": 32,
                    "n_epochs": 2, "log_interval": 150}, ON_POLICY_KEYS | {"train/std"},
                    [192, 320, 400], box=True),
    "a2c": Case("a2c", "CartPole-v1", 240, {"num_envs": 4, "n_steps": 5, "log_interval": 100},
                ON_POLICY_KEYS, [100, 200, 240]),
    "a2c-box": Case("a2c", "Pendulum-v1", 800, {"num_envs": 4, "n_steps": 5,
                    "log_interval": 300}, ON_POLICY_KEYS | {"train/std"}, [300, 600, 800],
                    box=True),
    "dqn": Case("dqn", "CartPole-v1", 400, {"net_arch": [32, 32], "learning_starts": 50,
                "batch_size": 16, "train_freq": 4, "gradient_steps": 2,
                "target_update_interval": 20, "log_interval": 100},
                {"loss/q", "train/q_mean", "train/epsilon", "train/n_updates"},
                [100, 200, 300, 400]),
    "sac": Case("sac", "Pendulum-v1", 400, {"net_arch": [32, 32], "learning_starts": 50,
                "batch_size": 32, "log_interval": 100},
                {"loss/q", "loss/actor", "loss/alpha", "train/alpha", "train/n_updates"},
                [100, 200, 300, 400], box=True),
    "td3": Case("td3", "Pendulum-v1", 400, {"net_arch": [32, 32], "learning_starts": 50,
                "batch_size": 32, "log_interval": 100},
                {"loss/q", "loss/actor", "train/n_updates"}, [100, 200, 300, 400], box=True),
}  # fmt: skip
"""A tiny run of each algorithm: its env, budget, hyperparameters, keys and row steps."""


def test_every_algorithm_has_a_tiny_case():
    """A new algorithm in the registry is run by every test here that covers them all."""
    assert {case.algo for case in CASES.values()} == set(ALGOS)
    assert all(algo in CASES for algo in ALGOS)  # under its own name, for the tests by algo


def config_for(case: Case, output_dir: Path, seed: int = 0, **overrides: Any) -> TrainConfig:
    """The CPU config of a case with both built-in sinks."""
    return TrainConfig(
        algo=case.algo, env_id=case.env_id, seed=seed, total_timesteps=case.steps,
        output_dir=output_dir, device="cpu", log_sinks=("json", "tensorboard"),
        hyperparams={**case.hp, **overrides},
    )  # fmt: skip


def tiny_run(case: Case, output_dir: Path, seed: int = 0, **overrides: Any) -> TrainResult:
    """Train a case end to end."""
    return train(config_for(case, output_dir, seed, **overrides))


def weights(result: TrainResult) -> dict[str, dict[str, torch.Tensor]]:
    """The saved model's state dicts."""
    return torch.load(result.run_dir / "model.pt", weights_only=True)["state_dicts"]


@pytest.mark.parametrize("name", list(CASES))
def test_logs_every_metric_to_both_sinks(tmp_path, name):
    """Episodes, losses and diagnostics reach JSONL and TensorBoard alike, on the cadence."""
    case = CASES[name]
    result = tiny_run(case, tmp_path)
    assert result.steps == case.steps
    rows = assert_sinks_agree(result.run_dir)
    keys = set().union(*rows) - {"step", "time"}
    assert {"episode/return", "episode/length", "time/sps"} | case.keys <= keys
    assert [row["step"] for row in rows if "time/sps" in row] == case.rows_at
    assert all(case.keys <= row.keys() for row in rows if "time/sps" in row)
    episodes = [row for row in rows if "episode/return" in row]
    assert result.episodes == len(episodes) > 0
    assert all(row["episode/length"] >= 1 for row in episodes)
    run_info = json.loads((result.run_dir / "run.json").read_text())
    assert run_info["status"] == "finished"
    assert (result.run_dir / "model.pt").is_file()


@pytest.mark.parametrize("algo", ALGOS)
def test_is_reproducible_on_cpu(tmp_path, algo):
    """Same config and seed: identical rows apart from wall-clock fields, identical weights."""
    case = CASES[algo]
    runs = [
        tiny_run(case, tmp_path / name, seed=seed)
        for name, seed in zip("abc", (3, 3, 4), strict=True)
    ]
    first, second, other = runs
    rows = [without_wall_clock(assert_sinks_agree(r.run_dir)) for r in (first, second, other)]
    assert rows[0] == rows[1] and rows[0] != rows[2]
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])


@pytest.mark.parametrize("algo", ALGOS)
def test_evaluate_replays_the_saved_policy(tmp_path, algo):
    """evaluate() reloads model.pt: deterministic runs with one seed repeat; stochastic works."""
    case = CASES[algo]
    result = tiny_run(case, tmp_path)
    first = evaluate(result.run_dir, n_episodes=2, seed=5)
    assert first.returns == evaluate(result.run_dir, n_episodes=2, seed=5).returns
    assert first.mean_return == pytest.approx(np.mean(first.returns))
    if case.env_id == "CartPole-v1":
        assert first.lengths == [int(r) for r in first.returns]  # CartPole pays 1 per step
    else:
        assert first.lengths == [200, 200] and all(r < 0 for r in first.returns)
    assert len(evaluate(result.run_dir, n_episodes=2, deterministic=False).returns) == 2


@pytest.mark.parametrize(
    ("algo", "env_id", "space"),
    [
        ("dqn", "Pendulum-v1", "Box"),
        ("sac", "CartPole-v1", "Discrete"),
        ("td3", "CartPole-v1", "Discrete"),
    ],
)
def test_wrong_action_space_is_refused_before_disk(tmp_path, algo, env_id, space):
    """An algorithm that does not fit the env's actions is a ValueError naming both; no run dir."""
    config = TrainConfig(algo=algo, env_id=env_id, seed=0, total_timesteps=100,
                         output_dir=tmp_path / "runs")  # fmt: skip
    with pytest.raises(ValueError, match=rf"'{algo}'.*'{env_id}'.*{space}"):
        train(config)
    assert not (tmp_path / "runs").exists()


class RowRecorder:
    """A sink keeping every row it gets, for comparing runs in memory."""

    delivery = "inline"  # the rows are compared while the logger is open

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def log_config(self, config):
        pass

    def log_metrics(self, metrics, step):
        self.rows.append({"step": step, **{k: v for k, v in metrics.items() if k != "time/sps"}})

    def close(self):
        pass


def open_trainer(config: TrainConfig):
    """A session and trainer on ``config`` outside any run, logging to a recorder."""
    recorder = RowRecorder()
    plan = resolve_plan(config)
    session = Session.open(plan, CompositeLogger({"recorder": recorder}))
    return session, trainer_class(plan.spec)(session), recorder


def iterate(session, trainer, until: int) -> None:
    """Run iterations until ``until`` environment steps, logging as run_loop does."""
    while session.steps < until:
        session.log(session.steps, trainer.iteration())


@pytest.mark.parametrize("algo", ALGOS)
def test_state_dict_holds_the_whole_training_state(tmp_path, algo):
    """A trainer restored from state_dict() (through a weights_only file) continues exactly as
    the original: same rows, same weights, once both start from the same env reset."""
    config = config_for(CASES[algo], tmp_path, seed=1)
    original, trainer, recorder = open_trainer(config)
    iterate(original, trainer, config.total_timesteps // 2)
    torch.save(trainer.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)

    restored, clone, clone_recorder = open_trainer(config)
    clone.load_state_dict(state)
    assert restored.steps == original.steps and restored.episodes.count == original.episodes.count
    for session, t in ((original, trainer), (restored, clone)):
        session.stepper.reset(seed=99)  # environments are not part of a trainer's state
        iterate(session, t, config.total_timesteps)
    after = len(recorder.rows) - len(clone_recorder.rows)
    assert recorder.rows[after:] == clone_recorder.rows and clone_recorder.rows
    for name, module in saved_modules(trainer).items():
        other = saved_modules(clone)[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in module.state_dict().items()), name
    original.close()
    restored.close()


def test_ppo_anneals_and_a2c_keeps_the_learning_rate(tmp_path):
    """PPO's default anneals the logged learning rate from its start; A2C's keeps it."""
    ppo = assert_sinks_agree(tiny_run(CASES["ppo"], tmp_path / "ppo").run_dir)
    lrs = [row["train/learning_rate"] for row in ppo if "train/learning_rate" in row]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0]
    a2c = assert_sinks_agree(tiny_run(CASES["a2c"], tmp_path / "a2c", anneal_lr=True).run_dir)
    lrs = [row["train/learning_rate"] for row in a2c if "train/learning_rate" in row]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]


def test_ppo_anneals_its_clipping_range_with_the_learning_rate_when_asked(tmp_path):
    """anneal_clip_range: each update clips at clip_range times the run still to go (the
    learning rate's factor); by default the range stays where it was set."""
    rows = assert_sinks_agree(
        tiny_run(CASES["ppo"], tmp_path / "annealed", anneal_clip_range=True).run_dir
    )
    updates = [row for row in rows if "train/clip_range" in row]
    # 2 envs x 32 steps a rollout, 256 steps: the factor before each rollout
    assert [row["train/clip_range"] for row in updates] == pytest.approx([0.2, 0.15, 0.1, 0.05])
    assert [row["train/learning_rate"] / 1e-3 for row in updates] == pytest.approx(
        [row["train/clip_range"] / 0.2 for row in updates]
    )
    kept = assert_sinks_agree(tiny_run(CASES["ppo"], tmp_path / "kept").run_dir)
    assert {row["train/clip_range"] for row in kept if "train/clip_range" in row} == {0.2}
    assert without_wall_clock(kept) != without_wall_clock(rows)  # the clip is the one used


def test_last_rollout_is_cut_to_the_budget(tmp_path):
    """A budget that is not a multiple of the rollout size is met, not overshot."""
    config = dataclasses.replace(config_for(CASES["ppo"], tmp_path), total_timesteps=100)
    assert train(config).steps == 100


def test_off_policy_update_counts_and_schedules(tmp_path):
    """DQN's epsilon decays to its final value; every trainer counts its gradient steps."""
    rows = assert_sinks_agree(tiny_run(CASES["dqn"], tmp_path / "dqn").run_dir)
    train_rows = [row for row in rows if "train/epsilon" in row]
    eps = [row["train/epsilon"] for row in train_rows]
    assert eps == sorted(eps, reverse=True) and eps[-1] == pytest.approx(0.04)
    # phases every 4 vector steps from step 52 (the first multiple of 4 at or past 50), 2 each
    assert train_rows[-1]["train/n_updates"] == 2 * len(range(52, 401, 4))
    for algo in ("sac", "td3"):  # a gradient step after every step from step 50 on
        rows = assert_sinks_agree(tiny_run(CASES[algo], tmp_path / algo).run_dir)
        assert [r["train/n_updates"] for r in rows if "train/n_updates" in r][-1] == 351, algo


def test_dqn_with_parallel_envs(tmp_path):
    """num_envs > 1 steps every env per iteration and still meets the budget."""
    result = tiny_run(CASES["dqn"], tmp_path, num_envs=4)
    assert result.steps == 400
    assert_sinks_agree(result.run_dir)


def test_sac_learns_or_fixes_the_temperature(tmp_path):
    """'auto' learns alpha (it moves from 1); a number is used as is and never learned."""
    rows = assert_sinks_agree(tiny_run(CASES["sac"], tmp_path / "auto").run_dir)
    assert [r["train/alpha"] for r in rows if "train/alpha" in r][0] < 1.0
    rows = assert_sinks_agree(tiny_run(CASES["sac"], tmp_path / "fixed", ent_coef=0.2).run_dir)
    alphas = [row["train/alpha"] for row in rows if "train/alpha" in row]
    assert alphas and alphas == pytest.approx([0.2] * len(alphas))
    assert not any("loss/alpha" in row for row in rows)


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
