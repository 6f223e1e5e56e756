"""Pixel, Dict and unsupported observation spaces: layouts, encoders, buffers, refusals.

The envs are in tests/support/obs_envs.py; tiny real runs, read back through the run's
files and ``load_policy``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_training import ConfigError, train
from rl_training.testing import tiny_config
from rl_training.trainers import evaluate, load_policy
from rl_training.trainers.buffers import FrameReplayBuffer, ImageReplayBuffer, ReplayBuffer
from rl_training.trainers.networks import set_precision
from rl_training.trainers.observations import (
    DictEncoder,
    NatureCNN,
    check_observation_space,
    layout,
)

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))
import obs_envs  # noqa: E402

ON = {"num_envs": 2, "n_steps": 16, "batch_size": 16, "n_epochs": 1}
OFF = {"learning_starts": 20, "batch_size": 8, "num_envs": 2, "buffer_size": 200}


def _run(tmp_path, algo, env_id, hp, steps=96):
    config = tiny_config(
        algo=algo, env_id=env_id, total_timesteps=steps, hyperparams=hp,
        output_dir=tmp_path / "runs",
    )  # fmt: skip
    return train(config)


# -- layouts -----------------------------------------------------------------------------


def test_layouts_keep_images_as_uint8_and_vectors_as_float32():
    pixels = layout(obs_envs.Pixels().observation_space)
    assert (pixels.kind, pixels.torch_dtype, pixels.shape) == ("image", torch.uint8, (40, 44, 3))
    reach = layout(obs_envs.Reach().observation_space)
    # observation 4 + achieved 2 + desired 2 + phase one-hot 3
    assert (reach.kind, reach.torch_dtype, reach.shape) == ("flat", torch.float32, (11,))
    seeing = layout(obs_envs.Seeing().observation_space)
    assert seeing.kind == "packed" and seeing.dtype == "uint8"
    assert seeing.shape == (4 * 4 + 40 * 40 * 3,)


def test_a_packed_dict_comes_back_out_of_its_bytes():
    env = obs_envs.Seeing()
    found = layout(env.observation_space)
    obs = [env.reset(seed=s)[0] for s in range(3)]
    batch = {key: np.stack([o[key] for o in obs]) for key in obs[0]}
    packed = found.to_tensor(batch, torch.device("cpu"))
    encoder = found.encoder()
    assert isinstance(encoder, DictEncoder)
    vectors = packed[:, : encoder.vector_bytes].contiguous().view(torch.float32)
    np.testing.assert_array_equal(vectors.numpy(), batch["state"])
    start, stop, shape = encoder.images[0]
    np.testing.assert_array_equal(packed[:, start:stop].reshape(3, *shape).numpy(), batch["camera"])
    assert encoder(packed).shape == (3, 4 + 256)


def test_the_cnn_reads_channels_first_and_last_alike():
    last = NatureCNN(obs_envs.Pixels().observation_space, 512, orthogonal=True)
    first = NatureCNN(obs_envs.Pixels(channels_first=True).observation_space, 512, orthogonal=True)
    first.load_state_dict(last.state_dict())
    env = obs_envs.Pixels()
    image = env.reset(seed=3)[0][None]
    hwc = torch.from_numpy(image)
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
    torch.testing.assert_close(last(hwc), first(chw))
    assert last(hwc).shape == (1, 512)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_first_convolution_sees_the_images_over_255_channels_last(precision):
    """Whatever the images' layout (channels first or last, a strided slice), the first
    convolution gets ``image / 255`` in the compute dtype, rounded once, laid out
    channels last; float images that need a gradient get one."""
    seen: list[torch.Tensor] = []
    for channels_first in (False, True):
        space = obs_envs.Pixels(channels_first=channels_first).observation_space
        cnn = NatureCNN(space, 512, orthogonal=True)
        set_precision(cnn, precision)
        cnn.cnn[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        images = torch.from_numpy(
            np.stack([obs_envs.Pixels(channels_first=channels_first).reset(seed=i)[0]
                      for i in range(6)])
        )  # fmt: skip
        for batch in (images, images[::2]):  # contiguous, and every other image
            cnn(batch)
            chw = batch if channels_first else batch.permute(0, 3, 1, 2)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            expected = (chw.to(torch.float32) / 255.0).to(dtype)
            got = seen.pop()
            assert got.dtype == dtype and torch.equal(got, expected)
            assert got.is_contiguous(memory_format=torch.channels_last)
        floats = images.to(torch.float32).requires_grad_()
        cnn(floats).sum().backward()
        assert floats.grad is not None and floats.grad.abs().sum() > 0


def test_the_cnn_in_bf16_convolves_in_bfloat16_near_fp32_and_trains_fp32_weights():
    """``set_precision(..., "bf16")``: every convolution and the linear layer compute in
    bfloat16, the features come out float32 within bfloat16's rounding of the fp32 ones,
    and the gradients land on the float32 master weights, near the fp32 gradients."""
    space = obs_envs.Pixels().observation_space
    images = torch.from_numpy(
        np.stack([obs_envs.Pixels().reset(seed=i)[0] for i in range(8)])
    )  # fmt: skip
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        cnn = NatureCNN(space, 512, orthogonal=True)
        set_precision(cnn, precision)
        seen: list[torch.dtype] = []
        for layer in (*cnn.cnn, cnn.linear):
            if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
                layer.register_forward_hook(lambda m, i, out, seen=seen: seen.append(out.dtype))
        features = cnn(images)
        features.square().mean().backward()
        expected = torch.bfloat16 if precision == "bf16" else torch.float32
        assert seen == [expected] * 4 and features.dtype == torch.float32
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in cnn.parameters())
        grads = torch.cat([p.grad.reshape(-1) for p in cnn.parameters()])
        results[precision] = features.detach(), grads
    for fp32, bf16 in zip(results["fp32"], results["bf16"], strict=True):
        relative = float(torch.linalg.vector_norm(bf16 - fp32) / torch.linalg.vector_norm(fp32))
        assert 0 < relative < 0.05, relative


def test_bf16_warns_where_the_cpu_only_emulates_bfloat16(monkeypatch):
    """On a CPU without oneDNN bfloat16 kernels (an AVX2-only CPU: emulated, 10-17x
    slower), precision="bf16" warns and names fp32; with them, or in fp32, nothing."""
    import re
    import warnings
    from pathlib import Path

    from rl_training.trainers import networks

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo.read_text()):
        assert networks.cpu_runs_bf16() is True  # native bfloat16: torch says so
    cnn = NatureCNN(obs_envs.Pixels().observation_space, 512, orthogonal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", networks.PrecisionWarning)
        set_precision(cnn, "fp32")
        if networks.cpu_runs_bf16() is not False:
            set_precision(cnn, "bf16")
    monkeypatch.setattr(networks, "cpu_runs_bf16", lambda: False)  # an AVX2-only CPU
    with pytest.warns(networks.PrecisionWarning, match=r"emulated.*precision='fp32' here"):
        set_precision(cnn, "bf16")
    assert cnn.compute_dtype == torch.bfloat16  # it warns, and does what it was asked


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        (gym.spaces.Tuple((gym.spaces.Discrete(2),)), "Box, Discrete, or a Dict"),
        (gym.spaces.Dict({"a": gym.spaces.MultiBinary(3)}), "entry 'a'"),
        (gym.spaces.Box(0, 255, (20, 20, 3), np.uint8), "at least 36x36"),
    ],
)
def test_unreadable_spaces_are_refused_in_one_line(space, fragment):
    with pytest.raises(ConfigError, match=fragment) as caught:
        check_observation_space("ppo", "Some-v0", space, images=True)
    assert "\n" not in str(caught.value) and "'Some-v0'" in str(caught.value)


# -- runs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "env_id", "hp"),
    [
        ("ppo", "obs_envs:Pixels-v0", ON),
        ("ppo", "obs_envs:PixelsCHW-v0", {**ON, "net_arch": []}),
        ("a2c", "obs_envs:Pixels-v0", {"num_envs": 2, "n_steps": 5}),
        ("dqn", "obs_envs:Pixels-v0", OFF),
        ("ppo", "obs_envs:Seeing-v0", ON),
        ("dqn", "obs_envs:Seeing-v0", OFF),
        ("ppo", "obs_envs:Pixels-v0", {**ON, "precision": "bf16"}),
        ("a2c", "obs_envs:Pixels-v0", {"num_envs": 2, "n_steps": 5, "precision": "bf16"}),
        ("dqn", "obs_envs:Seeing-v0", {**OFF, "precision": "bf16"}),
    ],
)
def test_image_observations_train_through_a_cnn(tmp_path, algo, env_id, hp):
    result = _run(tmp_path, algo, env_id, hp)
    assert result.steps == 96 and result.episodes > 0
    policy = load_policy(result.run_dir)
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    action = policy.predict(obs)
    assert env.action_space.contains(action)
    batch = (
        {k: np.stack([v, v]) for k, v in obs.items()} if isinstance(obs, dict)
        else np.stack([obs, obs])
    )  # fmt: skip
    assert policy.predict(batch).shape == (2,)
    assert evaluate(result.run_dir, n_episodes=2).lengths


@pytest.mark.parametrize(
    ("algo", "env_id", "hp"),
    [
        ("ppo", "obs_envs:Reach-v0", ON),
        ("a2c", "obs_envs:Reach-v0", {"num_envs": 2, "n_steps": 5}),
        ("dqn", "obs_envs:ReachDiscrete-v0", OFF),
        ("sac", "obs_envs:Reach-v0", OFF),
        ("td3", "obs_envs:Reach-v0", OFF),
    ],
)
def test_dict_observations_train_in_every_algorithm(tmp_path, algo, env_id, hp):
    result = _run(tmp_path, algo, env_id, hp)
    assert result.steps == 96
    policy = load_policy(result.run_dir)
    assert isinstance(policy.observation_space, gym.spaces.Dict)
    # the Dict's own order (gymnasium sorts the keys), kept through the model file
    assert list(policy.observation_space.spaces) == ["achieved_goal", "desired_goal",
                                                     "observation", "phase"]  # fmt: skip
    obs, _ = gym.make(env_id).reset(seed=1)
    action = policy.predict(obs)
    assert policy.action_space.contains(action)
    with pytest.raises(ConfigError, match="not a dict of"):
        policy.predict({"observation": obs["observation"]})
    assert len(evaluate(result.run_dir, n_episodes=2).returns) == 2


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_sac_and_td3_refuse_images_before_anything_is_written(tmp_path, algo):
    with pytest.raises(ConfigError, match="takes vector observations only") as caught:
        _run(tmp_path, algo, "obs_envs:PixelsContinuous-v0", OFF)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_a_tuple_space_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="Tuple") as caught:
        _run(tmp_path, "ppo", "obs_envs:Tupled-v0", ON)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_rollouts_and_replay_keep_pixels_as_uint8(tmp_path):
    from rl_training.runtime.plan import resolve_plan
    from rl_training.trainers.session import trainer_class

    for algo, hp in (("ppo", ON), ("dqn", OFF)):
        config = tiny_config(algo=algo, env_id="obs_envs:Pixels-v0", hyperparams=hp,
                             output_dir=tmp_path / "runs")  # fmt: skip
        plan = resolve_plan(config)
        assert trainer_class(plan.spec) is not None
    result = _run(tmp_path, "dqn", "obs_envs:Pixels-v0", OFF)
    checkpoint = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    stored = checkpoint["trainer"]["buffer"]
    assert stored["obs"].dtype == torch.uint8 and "next_obs" not in stored


# -- the image replay buffer ------------------------------------------------------------


def _transitions(rng, steps, n, shape, truncations=0.02):
    """Random uint8 observations of ``n`` envs with random ends."""
    obs = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    for _ in range(steps):
        next_obs = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        terminated = rng.random(n) < 0.1
        truncated = ~terminated & (rng.random(n) < truncations)
        after = next_obs.copy()  # what the env gives next: a new episode's first obs
        ended = terminated | truncated
        after[ended] = rng.integers(0, 256, (int(ended.sum()), *shape), dtype=np.uint8)
        yield obs, next_obs, rng.integers(0, 3, n), rng.random(n), terminated, truncated
        obs = after


@pytest.mark.parametrize(("capacity", "n"), [(40, 1), (37, 3), (500, 2)])
def test_the_image_buffer_samples_what_a_plain_one_would(capacity, n):
    """Same draws, same transitions: the next observations rebuilt from the next rows
    and the side store are the ones a buffer storing both would return (wherever
    they are bootstrapped from: not after a termination)."""
    shape = (1, 2, 3)
    cpu = torch.device("cpu")
    plain = ReplayBuffer(capacity, 6, (), True, cpu)
    images = ImageReplayBuffer(capacity, layout(gym.spaces.Box(0, 255, (1, 2, 3), np.uint8)),
                               n, (), True, cpu)  # fmt: skip
    rng = np.random.default_rng(0)
    for obs, next_obs, actions, rewards, terminated, truncated in _transitions(rng, 60, n, shape):
        args = (torch.from_numpy(actions), rewards, terminated, truncated)
        plain.add(torch.from_numpy(obs.reshape(n, -1)).float(),
                  torch.from_numpy(next_obs.reshape(n, -1)).float(), *args)  # fmt: skip
        images.add(torch.from_numpy(obs), torch.from_numpy(next_obs), *args)
        a = plain.sample(16, torch.Generator().manual_seed(1), batches=2)
        b = images.sample(16, torch.Generator().manual_seed(1), batches=2)
        torch.testing.assert_close(b.obs.reshape(2, 16, -1).float(), a.obs)
        bootstrapped = a.terminations == 0  # a terminated one's next obs is never read
        torch.testing.assert_close(
            b.next_obs.reshape(2, 16, -1).float()[bootstrapped], a.next_obs[bootstrapped]
        )
        for name in ("actions", "rewards", "terminations"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name))
    state = images.state_dict()
    # the side store saved in two parts: the finals rows still refer to, the newest rows'
    kept = len(state["side_finals"])
    assert kept <= images.finals_kept and (images.side_owner[kept:] < 0).all()
    assert state["side_newest"].shape == (n, 1, 2, 3)
    side = torch.zeros_like(images.side)  # as written before the two parts: the whole store
    side[: len(state["side_finals"])] = state["side_finals"]
    side[images.finals_kept :] = state["side_newest"]
    legacy = {k: v for k, v in state.items() if not k.startswith("side_")}
    legacy.update(side=side, side_row=state["side_row"], side_owner=state["side_owner"])
    for saved in (state, legacy):
        restored = ImageReplayBuffer(
            capacity, layout(gym.spaces.Box(0, 255, (1, 2, 3), np.uint8)), n, (), True, cpu
        )
        restored.load_state_dict(saved)
        a = images.sample(32, torch.Generator().manual_seed(2))
        b = restored.sample(32, torch.Generator().manual_seed(2))
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)


def test_truncations_beyond_the_side_store_are_learned_as_terminations():
    """More truncated transitions than the side store keeps: the oldest become
    terminations (never a wrong next observation); the rest match a plain buffer."""
    cpu, n, capacity = torch.device("cpu"), 2, 64
    plain = ReplayBuffer(capacity, 6, (), True, cpu)
    space = gym.spaces.Box(0, 255, (1, 2, 3), np.uint8)
    images = ImageReplayBuffer(capacity, layout(space), n, (), True, cpu)
    rng = np.random.default_rng(5)
    for obs, next_obs, actions, rewards, terminated, truncated in _transitions(
        rng, 100, n, (1, 2, 3), truncations=0.5
    ):
        args = (torch.from_numpy(actions), rewards, terminated, truncated)
        plain.add(torch.from_numpy(obs.reshape(n, -1)).float(),
                  torch.from_numpy(next_obs.reshape(n, -1)).float(), *args)  # fmt: skip
        images.add(torch.from_numpy(obs), torch.from_numpy(next_obs), *args)
    a = plain.sample(256, torch.Generator().manual_seed(1))
    b = images.sample(256, torch.Generator().manual_seed(1))
    evicted = (b.terminations == 1) & (a.terminations == 0)
    assert evicted.any() and images.finals_kept == capacity // 16 + n
    kept = ~evicted & (a.terminations == 0)
    torch.testing.assert_close(b.next_obs.reshape(256, -1).float()[kept], a.next_obs[kept])
    torch.testing.assert_close(b.obs.reshape(256, -1).float(), a.obs)


def _stacked_transitions(rng, steps, n, k, frame_shape):
    """``n`` envs of ``k`` stacked frames (``FrameStackObservation``'s way: an episode
    starts with its first frame ``k`` times); frames of a few values, so that stacks
    often look alike."""

    def first() -> np.ndarray:
        return np.repeat(rng.integers(0, 3, (1, *frame_shape), dtype=np.uint8), k, axis=0)

    obs = np.stack([first() for _ in range(n)])
    for _ in range(steps):
        frames = rng.integers(0, 3, (n, 1, *frame_shape), dtype=np.uint8)
        next_obs = np.concatenate([obs[:, 1:], frames], axis=1)
        terminated = rng.random(n) < 0.1
        truncated = ~terminated & (rng.random(n) < 0.05)
        after = next_obs.copy()
        for i in np.flatnonzero(terminated | truncated):
            after[i] = first()
        yield obs, next_obs, rng.integers(0, 3, n), rng.random(n), terminated, truncated
        obs = after


@pytest.mark.parametrize(("capacity", "n"), [(40, 1), (37, 3), (10, 4)])
def test_the_frame_buffer_samples_what_the_image_buffer_would(capacity, n):
    """Each frame once, the same samples as whole stacks: through the ring's wrap, episode
    starts, truncations, a checkpoint round trip, and a checkpoint of whole stacks
    (an ImageReplayBuffer's, written before frame storage) taken as frames."""
    cpu, space = torch.device("cpu"), gym.spaces.Box(0, 255, (4, 2, 3), np.uint8)
    stacks = ImageReplayBuffer(capacity, layout(space), n, (), True, cpu)
    frames = FrameReplayBuffer(capacity, layout(space), n, (), True, cpu)
    loaded: list[FrameReplayBuffer] = []

    def load(state):
        buffer = FrameReplayBuffer(capacity, layout(space), n, (), True, cpu)
        buffer.load_state_dict(state)
        return buffer

    rng = np.random.default_rng(0)
    for t, (obs, next_obs, *rest) in enumerate(_stacked_transitions(rng, 120, n, 4, (2, 3))):
        args = (torch.from_numpy(obs), torch.from_numpy(next_obs), torch.from_numpy(rest[0]),
                *rest[1:])  # fmt: skip
        for buffer in (stacks, frames, *loaded):
            buffer.add(*args)
        if t in (3, 60):  # from here on, also those loaded from each kind of checkpoint
            converted = load(stacks.state_dict())
            loaded += [converted, load(frames.state_dict()), load(converted.state_dict())]
        expected = stacks.sample(16, torch.Generator().manual_seed(t), batches=2)
        for buffer in (frames, *loaded):
            got = buffer.sample(16, torch.Generator().manual_seed(t), batches=2)
            for name, a, b in zip(expected._fields, expected, got, strict=True):
                assert torch.equal(a, b), (name, t)
    state = frames.state_dict()
    assert "obs" not in state and state["frames"].shape == (capacity + 3 * n, 2, 3)


def test_the_frame_buffer_refuses_observations_that_are_not_frame_stacks():
    space = gym.spaces.Box(0, 255, (4, 2, 3), np.uint8)
    frames = FrameReplayBuffer(8, layout(space), 1, (), True, torch.device("cpu"))
    obs = torch.arange(24, dtype=torch.uint8).reshape(1, 4, 2, 3)  # four different frames
    with pytest.raises(ValueError, match=r"neither its previous one shifted .* repeated 4 times"):
        frames.add(obs, obs, torch.zeros(1, dtype=torch.long), np.zeros(1), np.zeros(1, bool),
                   np.zeros(1, bool))  # fmt: skip
    assert frames.size == 0 and frames.added == 0


def test_a_replay_buffer_larger_than_memory_is_refused_before_anything_is_written(tmp_path):
    from rl_training.runtime.spaces import available_memory, replay_memory

    with pytest.raises(ConfigError, match=r"buffer_size.*largest buffer_size that fits is") as e:
        _run(tmp_path, "dqn", "obs_envs:Pixels-v0", {**OFF, "buffer_size": 10**11})
    message = str(e.value)
    assert "\n" not in message and "10000000000" in message and "40x44x3 uint8" in message
    assert not (tmp_path / "runs").exists()
    fits = int(message.rsplit(" ", 1)[1])
    found = layout(obs_envs.Pixels().observation_space)
    available = available_memory(torch.device("cpu"))
    assert 0 < replay_memory(fits, found, 2, ()) <= available
    assert replay_memory(fits * 11 // 10, found, 2, ()) > available


@pytest.mark.parametrize(("activation", "ortho_init"), [("tanh", True), ("relu", False)])
def test_the_fused_rollout_policy_is_the_actor_critic_with_either_activation(
    activation, ortho_init
):
    """rollout_act (actor and critic fused) gives what act gives, for SB3's defaults and
    for the zoo's MuJoCo choice (ReLU, PyTorch's init), with and without a CNN."""
    from rl_training.trainers.networks import ActorCritic

    for space, obs in (
        (gym.spaces.Box(-1.0, 1.0, (5,), np.float32), torch.randn(6, 5)),
        (obs_envs.Pixels().observation_space,
         torch.randint(0, 256, (6, 40, 44, 3), dtype=torch.uint8)),
    ):  # fmt: skip
        torch.manual_seed(0)
        agent = ActorCritic(space, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), [32, 32],
                            -2.0, activation=activation, ortho_init=ortho_init)  # fmt: skip
        assert agent.actor.activation is (torch.relu if activation == "relu" else torch.tanh)
        torch.testing.assert_close(agent.log_std.detach(), torch.full((2,), -2.0))
        with torch.no_grad():
            fused = agent.rollout_act()(obs, torch.Generator().manual_seed(3))
            plain = agent.act(obs, torch.Generator().manual_seed(3))
        for a, b in zip(fused, plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
