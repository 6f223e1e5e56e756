"""The table of algorithms: one spec per algorithm, read by config, CLI and trainers."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from rl_training import TrainConfig
from rl_training.hyperparams import _OffPolicy
from rl_training.registry import ALGORITHMS, ALGOS, get_spec
from rl_training.runtime.plan import resolve_plan
from rl_training.trainers import train
from rl_training.trainers.session import trainer_class

OFF_POLICY = [algo for algo in ALGOS if issubclass(get_spec(algo).hyperparams, _OffPolicy)]


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_every_spec_names_a_trainer_class_that_follows_the_protocol(algo):
    """Each entry's trainer imports and has the lifecycle methods and a policy loader."""
    spec = get_spec(algo)
    assert spec.name == algo
    cls = trainer_class(spec)
    for method in ("iteration", "state_dict", "load_state_dict", "load_policy"):
        assert callable(getattr(cls, method)), method
    assert cls.CPU_THREADS is None or cls.CPU_THREADS >= 1
    assert cls.SAVED_MODULES and all(isinstance(name, str) for name in cls.SAVED_MODULES)
    assert "et al. 20" in spec.title, spec.title  # "Name (Author et al. year, reference)"


def test_unknown_algorithm_lists_the_known_ones():
    """get_spec() of an unknown name is a ValueError naming it and every algorithm."""
    with pytest.raises(ValueError, match=r"'ddpg'.*'ppo', 'a2c', 'dqn', 'sac', 'td3'"):
        get_spec("ddpg")


def test_configs_are_validated_without_torch():
    """TrainConfig, the registry and the hyperparameters import neither torch nor gymnasium."""
    code = (
        "import sys; from rl_training import TrainConfig; "
        "TrainConfig(algo='sac', env_id='Pendulum-v1', seed=0, total_timesteps=1, "
        "hyperparams={'batch_size': 8}); "
        "print(sorted(m for m in ('torch', 'gymnasium') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plan_resolves_device_spaces_and_hyperparameters_once(tmp_path):
    """The plan carries the config's own hyperparameter object, the device and the spaces."""
    config = TrainConfig(
        algo="dqn", env_id="CartPole-v1", seed=0, total_timesteps=10, device="cpu",
        output_dir=tmp_path, hyperparams={"batch_size": 8},
    )  # fmt: skip
    plan = resolve_plan(config)
    assert plan.hp is config.algo_hyperparams()  # built once, when the config was made
    assert plan.hp.batch_size == 8 and plan.spec is get_spec("dqn")
    assert plan.device.type == "cpu"
    assert isinstance(plan.observation_space, gym.spaces.Box)
    assert isinstance(plan.action_space, gym.spaces.Discrete)
    assert not tmp_path.joinpath("runs").exists()


class TupleObsEnv(gym.Env):
    """An env whose observations are a Tuple space, which no network here reads."""

    observation_space = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Discrete(2)))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return (0, 0), {}

    def step(self, action):
        return (0, 0), 0.0, True, False, {}


gym.register("rl_training_tests/TupleObs-v0", entry_point=TupleObsEnv)


@pytest.mark.parametrize(
    "algo", [algo for algo in ALGOS if "Discrete" in get_spec(algo).action_spaces]
)
def test_unsupported_observation_space_is_refused_before_disk(tmp_path, algo):
    """A Tuple observation space fails with the algorithm, env and space named; no run dir."""
    config = TrainConfig(
        algo=algo, env_id="rl_training_tests/TupleObs-v0", seed=0, total_timesteps=10,
        output_dir=tmp_path / "runs", device="cpu",
    )  # fmt: skip
    with pytest.raises(ValueError, match=rf"'{algo}'.*TupleObs.*observation space.*Tuple.*Box"):
        train(config)
    assert not (tmp_path / "runs").exists()


def test_off_policy_training_starts_at_learning_starts_for_every_algorithm():
    """One rule: a training phase follows the vector step that stores learning_starts."""
    for algo in OFF_POLICY:
        hp = get_spec(algo).build_hyperparams({"learning_starts": 8, "train_freq": 2})
        assert [s for s in range(12) if hp.trains_after(s, s)] == [8, 10], algo
    assert np.isfinite(get_spec("dqn").build_hyperparams({}).learning_starts)
