"""On a CUDA device (every test here is skipped without one): each trainer trains there,
pixels stay uint8 until the network, models move between the GPU and the CPU, a run
checkpointed on the GPU resumes there.

``benchmarks/gpu_check.sh`` runs this file on a lent GPU machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_training import TrainConfig
from rl_training.runtime.plan import resolve_plan
from rl_training.testing import read_jsonl
from rl_training.trainers import load_policy, resume, train
from rl_training.trainers.buffers import FrameReplayBuffer, ImageReplayBuffer
from rl_training.trainers.observations import layout

sys.path.insert(0, str(Path(__file__).parent / "support"))
import obs_envs  # noqa: E402,F401  (registers Pixels-v0, Reach-v0...)

pytestmark = pytest.mark.gpu

ON = {"num_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 2}
OFF = {"learning_starts": 50, "batch_size": 32, "buffer_size": 1000, "net_arch": [32, 32]}

RUNS: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    "ppo": ("ppo", "CartPole-v1", 256, ON),
    "ppo-box": ("ppo", "Pendulum-v1", 256, {**ON, "normalize_obs": True,
                                             "normalize_reward": True}),
    "a2c": ("a2c", "CartPole-v1", 200, {"num_envs": 4, "n_steps": 5}),
    "dqn": ("dqn", "CartPole-v1", 300, {**OFF, "train_freq": 4, "gradient_steps": 2}),
    "sac": ("sac", "Pendulum-v1", 200, {**OFF, "normalize_obs": True}),
    "td3": ("td3", "Pendulum-v1", 200, OFF),
    "ppo-pixels": ("ppo", "Pixels-v0", 128, ON),
    "dqn-pixels": ("dqn", "Pixels-v0", 200, {**OFF, "train_freq": 4}),
    "sac-dict": ("sac", "Reach-v0", 200, OFF),
    "sac-bf16": ("sac", "Pendulum-v1", 200, {**OFF, "precision": "bf16"}),
    "td3-bf16": ("td3", "Pendulum-v1", 200, {**OFF, "precision": "bf16"}),
    "dqn-bf16": ("dqn", "CartPole-v1", 300, {**OFF, "train_freq": 4, "precision": "bf16"}),
}  # fmt: skip


def _config(tmp_path: Path, case: str, **overrides: Any) -> TrainConfig:
    algo, env_id, steps, hp = RUNS[case]
    fields: dict[str, Any] = {
        "algo": algo, "env_id": env_id, "seed": 0, "total_timesteps": steps,
        "output_dir": tmp_path / "runs", "device": "cuda", "hyperparams": hp,
        "log_sinks": ("json",),
    }  # fmt: skip
    fields.update(overrides)
    return TrainConfig(**fields)


def _batch(space: gym.Space[Any], n: int) -> Any:
    space.seed(1)
    samples = [space.sample() for _ in range(n)]
    if isinstance(space, gym.spaces.Dict):
        return {key: np.stack([s[key] for s in samples]) for key in space.spaces}
    return np.stack(samples)


@pytest.mark.parametrize("case", list(RUNS))
def test_trains_on_cuda_and_acts_alike_on_both_devices(tmp_path, case):
    """A tiny run on the GPU finishes and logs finite losses; its model loads on the CPU
    and on the GPU, and both give the same actions for the same observations."""
    result = train(_config(tmp_path, case))
    assert result.steps == RUNS[case][2]
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    losses = [v for row in rows for k, v in row.items() if k.startswith("loss/")]
    assert losses and all(np.isfinite(losses))
    on_cpu = load_policy(result.run_dir, device="cpu")
    on_gpu = load_policy(result.run_dir, device="cuda")
    assert on_gpu.device.type == "cuda"
    obs = _batch(on_cpu.observation_space, 64)
    cpu_actions, gpu_actions = on_cpu.predict(obs), on_gpu.predict(obs)
    if np.issubdtype(cpu_actions.dtype, np.integer):
        assert (cpu_actions == gpu_actions).mean() >= 0.95  # argmax near-ties may differ
    else:
        np.testing.assert_allclose(cpu_actions, gpu_actions, atol=1e-3)


def test_a_run_checkpointed_on_cuda_resumes_there_and_on_the_cpu(tmp_path):
    """SAC checkpointed on the GPU (buffer, optimisers, normaliser on the device) goes on
    from its step on the GPU, then once more on the CPU."""
    run_dir = train(_config(tmp_path, "sac", checkpoint_every=100)).run_dir
    assert resume(run_dir, total_timesteps=300).steps == 300
    assert json.loads((run_dir / "config.json").read_text())["device"] == "cuda"
    assert resume(run_dir, total_timesteps=400, device="cpu").steps == 400
    steps = [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl") if "step" in row]
    assert steps == sorted(steps) and steps[-1] == 400


def test_the_frame_buffer_keeps_and_rebuilds_its_stacks_on_the_gpu():
    """Atari's replay buffer on CUDA: frames, flags and indices there; the same samples
    as whole stacks; a CPU checkpoint of whole stacks taken in."""
    cuda, space = torch.device("cuda"), gym.spaces.Box(0, 255, (4, 3, 3), np.uint8)
    stacks = ImageReplayBuffer(20, layout(space), 2, (), True, cuda)
    frames = FrameReplayBuffer(20, layout(space), 2, (), True, cuda)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 255, (2, 1, 3, 3), dtype=torch.uint8, generator=gen).repeat(1, 4, 1, 1)
    for t in range(30):
        new = torch.randint(0, 255, (2, 1, 3, 3), dtype=torch.uint8, generator=gen)
        next_obs = torch.cat([obs[:, 1:], new], dim=1)
        ended = np.array([t % 7 == 6, False])
        args = (obs.to(cuda), next_obs.to(cuda), torch.zeros(2, dtype=torch.long, device=cuda),
                np.ones(2), ended, np.zeros(2, dtype=bool))  # fmt: skip
        stacks.add(*args)
        frames.add(*args)
        obs = torch.where(torch.from_numpy(ended)[:, None, None, None], new.repeat(1, 4, 1, 1),
                          next_obs)  # fmt: skip
    assert frames.frames.device.type == "cuda" and frames.frames.dtype == torch.uint8
    state = {
        k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in stacks.state_dict().items()
    }
    converted = FrameReplayBuffer(20, layout(space), 2, (), True, cuda)
    converted.load_state_dict(state)
    expected = stacks.sample(16, torch.Generator(cuda).manual_seed(1))
    for buffer in (frames, converted):
        got = buffer.sample(16, torch.Generator(cuda).manual_seed(1))
        for a, b in zip(expected, got, strict=True):
            assert b.device.type == "cuda" and torch.equal(a, b)


def test_pixels_stay_uint8_until_the_network(tmp_path):
    """The replay buffer and the rollout buffer hold uint8 frames on the GPU (a quarter
    of float32's bytes, and a quarter of the host-to-device copy)."""
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    buffer = ImageReplayBuffer(64, layout(space), 2, (), True, torch.device("cuda"))
    assert buffer.obs.dtype == torch.uint8 and buffer.obs.device.type == "cuda"
    plan = resolve_plan(_config(tmp_path, "ppo-pixels"))
    assert plan.device.type == "cuda"
