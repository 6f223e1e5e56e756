"""Faults a run must survive cleanly: training that diverges (NaN or infinite
observations, rewards, losses) and environments that break. Each ends the run "failed"
with one line, and no file of the run holds non-finite weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control import CartPoleEnv

from rl_training import TrainConfig, train
from rl_training.errors import EnvError, NonFiniteError
from rl_training.testing import strict_json_loads
from rl_training.trainers.checkpoint import load_checkpoint


class NaNObservationsAfter300(CartPoleEnv):
    """CartPole whose observations turn NaN after 300 steps of one env copy."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        if self.steps > 300:
            obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


gym.register("rl_training_tests/NaNObs-v0", entry_point=NaNObservationsAfter300,
             max_episode_steps=200)  # fmt: skip

INF_REWARD_ENV = """
from gymnasium.envs.classic_control import CartPoleEnv
from gymnasium.envs.registration import register


class InfiniteRewardAfter200(CartPoleEnv):
    steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        InfiniteRewardAfter200.steps += 1
        return obs, float("inf") if self.steps > 200 else reward, terminated, truncated, info


register(id="InfReward-v0", entry_point=InfiniteRewardAfter200, max_episode_steps=200)
"""


def _finite(state_dicts) -> bool:
    return all(
        torch.isfinite(t).all() for sd in state_dicts.values() for t in sd.values()
        if t.is_floating_point()
    )  # fmt: skip


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_nan_observations_end_the_run_failed_with_finite_files(tmp_path, algo):
    """NaN observations: NonFiniteError naming the quantity and step; checkpoint stays finite."""
    hp = (
        {"num_envs": 1, "n_steps": 64, "batch_size": 32, "n_epochs": 2}
        if algo == "ppo"
        else {"learning_starts": 50, "batch_size": 16, "net_arch": [32, 32], "log_interval": 32}
    )
    config = TrainConfig(algo=algo, env_id="rl_training_tests/NaNObs-v0", seed=0,
                         total_timesteps=2000, output_dir=tmp_path, device="cpu",
                         checkpoint_every=128, log_sinks=["json"], hyperparams=hp)  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"(loss/\w+ is nan|weights \S+ are not finite) "
                                             r"at step \d+"):  # fmt: skip
        train(config)
    (run_dir,) = tmp_path.iterdir()
    info = strict_json_loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed"
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert 0 < checkpoint.step <= 384
    modules = {name: checkpoint.trainer[name] for name in ("agent", "q_net") if name in
               checkpoint.trainer}  # fmt: skip
    assert modules and _finite(modules)
    assert not (run_dir / "model.pt").exists()


def test_infinite_rewards_fail_in_one_line_and_run_json_stays_strict(tmp_path):
    """rl-train on +inf rewards: exit 1, one line naming the step, run.json strict JSON."""
    (tmp_path / "inf_envs.py").write_text(INF_REWARD_ENV)
    done = subprocess.run(
        [sys.executable, "-m", "rl_training", "--algo", "ppo", "--env-id", "inf_envs:InfReward-v0",
         "--total-timesteps", "4000", "--output-dir", str(tmp_path / "runs"), "--quiet",
         "--hp", "num_envs=1", "--hp", "n_steps=64", "--hp", "batch_size=32"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "at step" in lines[0] and "Traceback" not in done.stderr, lines
    (run_dir,) = Path(tmp_path / "runs").iterdir()
    info = strict_json_loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed"
    assert not (run_dir / "model.pt").exists()


class Faulty(CartPoleEnv):
    """CartPole that breaks in the way its ``fault`` says, after ``after`` steps."""

    def __init__(self, fault: str = "step", after: int = 50, **kwargs):
        super().__init__(**kwargs)
        self.fault, self.after, self.steps = fault, after, 0

    def reset(self, **kwargs):
        if self.fault == "reset":
            raise RuntimeError("the simulator did not start")
        return super().reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        if self.steps > self.after:
            if self.fault == "step":
                raise RuntimeError("the simulator crashed")
            if self.fault == "shape":
                obs = np.zeros(3, dtype=np.float32)  # the space says 4
        return obs, reward, terminated, truncated, info


for fault in ("step", "reset", "shape"):
    gym.register(f"rl_training_tests/Faulty-{fault}-v0", entry_point=Faulty,
                 kwargs={"fault": fault}, max_episode_steps=200)  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "message"),
    [("step", r"failed in step\(\) at step \d+: RuntimeError: the simulator crashed"),
     ("reset", r"failed in reset\(\) at step 0: RuntimeError: the simulator did not start"),
     ("shape", r"failed in step\(\) at step \d+: ValueError: .*observation space is Box")],
)  # fmt: skip
def test_an_env_that_breaks_is_one_error_naming_it(tmp_path, fault, message):
    """An env raising in reset or step, or returning the wrong shape: EnvError, run failed."""
    env_id = f"rl_training_tests/Faulty-{fault}-v0"
    config = TrainConfig(algo="ppo", env_id=env_id, seed=0, total_timesteps=512,
                         output_dir=tmp_path, device="cpu", log_sinks=["json"],
                         hyperparams={"num_envs": 2, "n_steps": 32, "batch_size": 32})  # fmt: skip
    with pytest.raises(EnvError, match=f"env '{env_id}' " + message):
        train(config)
    (run_dir,) = tmp_path.iterdir()
    assert strict_json_loads((run_dir / "run.json").read_text())["status"] == "failed"
