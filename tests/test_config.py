"""TrainConfig and hyperparameter validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import rl_training
from rl_training.config import ALGOS, TrainConfig
from rl_training.hyperparams import PPOHyperparams, SACHyperparams
from rl_training.registry import ALGORITHMS, get_spec

REQUIRED = {"algo": "ppo", "env_id": "CartPole-v1", "seed": 1, "total_timesteps": 10}


def test_defaults_match_the_contract():
    """Optional fields default as the contract says."""
    config = TrainConfig(**REQUIRED)
    assert config.output_dir == "runs"
    assert config.device == "auto"
    assert tuple(config.log_sinks) == ("json", "tensorboard")
    assert dict(config.hyperparams) == {}
    assert rl_training.TrainConfig is TrainConfig


def test_is_frozen_and_keyword_only():
    """Fields cannot be reassigned, nor passed positionally."""
    config = TrainConfig(**REQUIRED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        TrainConfig("ppo", "CartPole-v1", 1, 10)  # type: ignore[misc]


def test_hyperparams_are_copied_and_read_only():
    """Changing the caller's dict later does not change the config."""
    overrides = {"n_steps": 32}
    config = TrainConfig(**REQUIRED, hyperparams=overrides)
    overrides["n_steps"] = 64
    assert config.hyperparams["n_steps"] == 32
    with pytest.raises(TypeError):
        config.hyperparams["n_steps"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("algo", "trpo", ["algo", "'trpo'", "'ppo'", "'td3'"]),
        ("algo", "PPO", ["algo", "'PPO'"]),
        ("env_id", "", ["env_id"]),
        ("env_id", None, ["env_id", "None"]),
        ("seed", -1, ["seed", "-1", ">= 0"]),
        ("seed", 1.5, ["seed", "1.5", "integer"]),
        ("seed", True, ["seed", "True"]),
        ("total_timesteps", 0, ["total_timesteps", "0", ">= 1"]),
        ("total_timesteps", -5, ["total_timesteps", "-5"]),
        ("total_timesteps", "100", ["total_timesteps", "'100'"]),
        ("device", "gpu", ["device", "'gpu'", "'cuda:N'"]),
        ("device", "cuda:x", ["device", "'cuda:x'"]),
        ("output_dir", 3, ["output_dir", "3"]),
        ("log_sinks", [], ["log_sinks", "empty"]),
        ("log_sinks", ["json", "json"], ["log_sinks", "'json'", "more than once"]),
        ("log_sinks", ["json", ""], ["log_sinks", "''"]),
        ("log_sinks", ["a b"], ["log_sinks", "'a b'"]),
        ("log_sinks", 5, ["log_sinks", "5"]),
        ("hyperparams", [("n_steps", 1)], ["hyperparams", "valid keys"]),
    ],
)
def test_bad_field_names_field_and_accepted_values(field, value, fragments):
    """A bad value raises ValueError naming the field, the value and what is accepted."""
    with pytest.raises(ValueError) as info:
        TrainConfig(**{**REQUIRED, field: value})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_log_sinks_accepts_a_comma_separated_string():
    """'json, tensorboard' is read as two names."""
    config = TrainConfig(**REQUIRED, log_sinks="json, tensorboard")
    assert config.log_sinks == ("json", "tensorboard")


def test_unknown_hyperparameter_lists_the_valid_keys():
    """An unknown key for the algorithm names itself and every valid key."""
    with pytest.raises(ValueError) as info:
        TrainConfig(**REQUIRED, hyperparams={"buffer_size": 10})
    message = str(info.value)
    assert "'buffer_size'" in message and "'ppo'" in message
    for name in ("learning_rate", "n_steps", "clip_range", "num_envs"):
        assert name in message


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"n_steps": 0}, "n_steps"),
        ({"n_steps": 2.5}, "n_steps"),
        ({"n_steps": "8"}, "n_steps"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"gamma": 1.5}, "gamma"),
        ({"anneal_lr": 1}, "anneal_lr"),
        ({"net_arch": [64, 0]}, "net_arch"),
        ({"net_arch": [64, "x"]}, "net_arch"),
    ],
)
def test_bad_hyperparameter_value_names_it(overrides, fragment):
    """A hyperparameter of the wrong type or range is a ValueError naming it."""
    with pytest.raises(ValueError, match=fragment):
        TrainConfig(**REQUIRED, hyperparams=overrides)


def test_hyperparameters_are_typed_by_their_defaults():
    """Ints are accepted for floats, lists for tuples, integral floats for ints."""
    hp = get_spec("ppo").build_hyperparams({"learning_rate": 1, "net_arch": [32], "n_steps": 16.0})
    assert isinstance(hp, PPOHyperparams)
    assert hp.learning_rate == 1.0 and type(hp.learning_rate) is float
    assert hp.net_arch == (32,)
    assert hp.n_steps == 16 and type(hp.n_steps) is int


def test_sac_ent_coef_takes_auto_or_a_number():
    """SAC's ent_coef is 'auto', 'auto_<x>' or a positive number."""
    assert get_spec("sac").build_hyperparams({"ent_coef": "auto_0.1"}).ent_coef == "auto_0.1"
    assert get_spec("sac").build_hyperparams({"ent_coef": 0.2}).ent_coef == 0.2
    for bad in ("manual", "auto_x", -0.1):
        with pytest.raises(ValueError, match="ent_coef"):
            SACHyperparams(ent_coef=bad)


def test_every_algorithm_has_documented_hyperparameters():
    """Each algorithm's hyperparameter class builds with defaults and documents num_envs."""
    assert tuple(ALGORITHMS) == ALGOS == ("ppo", "a2c", "dqn", "sac", "td3")
    for algo, spec in ALGORITHMS.items():
        names = {f.name for f in dataclasses.fields(spec.hyperparams)}
        assert {"num_envs", "learning_rate", "gamma", "log_interval"} <= names, algo
        assert spec.build_hyperparams({}) == spec.hyperparams()


def test_to_dict_is_json_shaped(tmp_path):
    """to_dict() gives plain JSON types, including the resolved hyperparameters."""
    config = TrainConfig(**REQUIRED, output_dir=Path(tmp_path), hyperparams={"n_epochs": 3})
    data = config.to_dict()
    assert data["output_dir"] == str(tmp_path)
    assert data["resolved_hyperparams"]["n_epochs"] == 3
    assert data["log_sinks"] == ["json", "tensorboard"]


def test_config_pickles_copies_and_converts():
    """A config can go to a worker process, be deep-copied, replaced and turned into a dict."""
    import copy
    import pickle

    config = TrainConfig(**REQUIRED, hyperparams={"n_steps": 32})
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config
    assert dataclasses.replace(config, seed=5).hyperparams == {"n_steps": 32}
    assert dataclasses.asdict(config)["hyperparams"] == {"n_steps": 32}
