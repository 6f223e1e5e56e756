"""normalize_obs / normalize_reward: running statistics, saved in checkpoints and
models, applied by load_policy and evaluate, carried through resume, merged across
torchrun ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_training import ConfigError, resume, train
from rl_training.testing import read_jsonl, tiny_config
from rl_training.trainers import evaluate, load_policy
from rl_training.trainers.checkpoint import load_checkpoint, load_model
from rl_training.trainers.normalize import ObsNormalizer, RewardNormalizer, RunningMeanStd

sys.path.insert(0, str(Path(__file__).parent / "support"))
import obs_envs  # noqa: E402, F401  # registers Pixels-v0

HP = {"num_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1,
      "normalize_obs": True, "normalize_reward": True}  # fmt: skip


def test_running_statistics_are_those_of_every_sample():
    rng = np.random.default_rng(0)
    stats = RunningMeanStd(3)
    batches = [rng.normal(5.0, 3.0, (n, 3)) for n in (1, 7, 64, 2)]
    for batch in batches:
        stats.update(torch.from_numpy(batch))
    every = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean.numpy(), every.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.var.numpy(), every.var(0), rtol=1e-4)
    assert stats.count.item() == pytest.approx(len(every) + 1e-4)


def test_observations_and_rewards_are_normalised_and_clipped():
    normalizer = ObsNormalizer(2)
    normalizer.update(torch.tensor([[0.0, 10.0], [2.0, 30.0]], dtype=torch.float64))
    out = normalizer(torch.tensor([[1.0, 20.0], [1000.0, 20.0]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.zeros(2), atol=1e-3, rtol=0)
    assert out[1, 0] == 10.0  # clipped
    np.testing.assert_allclose(normalizer.numpy(np.array([[1000.0, 20.0]])), out[1:].numpy())
    rewards = RewardNormalizer(2, gamma=0.5)
    first = rewards(np.array([1.0, 1.0]), np.array([False, True]), None)
    assert first.dtype == np.float32 and rewards.returns.tolist() == [1.0, 0.0]


def test_statistics_go_through_checkpoint_resume_and_load_policy(tmp_path):
    config = tiny_config(env_id="Pendulum-v1", total_timesteps=448, output_dir=tmp_path,
                         hyperparams=HP)  # fmt: skip
    first = train(config)
    checkpoint = load_checkpoint(first.run_dir / "checkpoint.pt")
    saved = checkpoint.trainer["session"]["obs_norm"]
    # every observation of training: the first resets and 224 vector steps of 2 envs
    assert saved["count"].item() == pytest.approx(2 * (1 + 224) + 1e-4)
    assert checkpoint.trainer["session"]["reward_norm"]["count"].item() > 448
    model = load_model(first.run_dir / "model.pt")
    for key, value in saved.items():
        torch.testing.assert_close(model.state_dicts["obs_norm"][key], value)

    # load_policy takes raw observations and applies the saved statistics itself
    policy = load_policy(first.run_dir)
    normalizer = ObsNormalizer.from_state(saved)
    obs = np.array([[1.0, 0.0, 8.0], [-0.5, 0.5, -3.0]], dtype=np.float32)
    agent_in = torch.from_numpy(normalizer.numpy(obs))
    from rl_training.trainers.networks import ActorCritic

    agent = ActorCritic(policy.observation_space, policy.action_space, [64, 64])
    agent.load_state_dict(model.state_dicts["agent"])
    with torch.no_grad():
        expected = agent.to_env(agent.deterministic_action(agent_in))
        raw = agent.to_env(agent.deterministic_action(torch.from_numpy(obs)))
    np.testing.assert_allclose(policy.predict(obs), expected, rtol=1e-6)
    assert not np.allclose(policy.predict(obs), raw)
    assert len(evaluate(first.run_dir, n_episodes=2).returns) == 2

    # resume goes on from the saved statistics
    resumed = resume(first.run_dir, total_timesteps=576)
    assert resumed.steps == 576
    after = load_checkpoint(first.run_dir / "checkpoint.pt").trainer["session"]["obs_norm"]
    # the resumed run's resets and 64 more vector steps of 2 envs, on top of the saved ones
    assert after["count"].item() == pytest.approx(saved["count"].item() + 2 * (1 + 64))
    # episode returns stay the env's own (Pendulum's are about -1000 to -100 a 200-step episode)
    returns = [r["episode/return"] for r in read_jsonl(first.run_dir / "metrics.jsonl")
               if "episode/return" in r]  # fmt: skip
    assert returns and all(r < -50 for r in returns)


def test_normalize_obs_refuses_images_before_anything_is_written(tmp_path):
    config = tiny_config(env_id="obs_envs:Pixels-v0", output_dir=tmp_path / "runs",
                         hyperparams={"normalize_obs": True})  # fmt: skip
    with pytest.raises(ConfigError, match=r"hyperparams\['normalize_obs'\].*vector Box") as e:
        train(config)
    assert "\n" not in str(e.value) and not (tmp_path / "runs").exists()


def test_hopper_with_the_mujoco_preset_trains_and_evaluates_normalised(tmp_path):
    """A MuJoCo task through rl-training[mujoco]: the preset's normalisation, a few
    hundred steps, evaluated with the saved statistics."""
    pytest.importorskip("mujoco", reason="the mujoco extra: pip install 'rl-training[mujoco]'")
    from rl_training.presets import preset_hyperparams

    hp = {**preset_hyperparams("mujoco", "ppo"), "n_steps": 128}
    result = train(tiny_config(env_id="Hopper-v5", total_timesteps=256, output_dir=tmp_path,
                               hyperparams=hp))  # fmt: skip
    stats = load_model(result.run_dir / "model.pt").state_dicts["obs_norm"]
    assert stats["mean"].shape == (11,) and stats["count"].item() == pytest.approx(257 + 1e-4)
    evaluation = evaluate(result.run_dir, n_episodes=2)
    assert all(length > 0 for length in evaluation.lengths)
