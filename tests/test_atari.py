"""Atari games through rl-training[atari]: ids as they are, the standard preprocessing,
game scores, tiny real runs, evaluation, videos and the replay-memory refusal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_training import resume, train
from rl_training.runtime.environments import GAME_LENGTH, GAME_RETURN, make_env
from rl_training.runtime.plan import resolve_plan
from rl_training.testing import read_jsonl, strict_json_loads, tiny_config
from rl_training.trainers import evaluate, load_policy

pytest.importorskip("ale_py", reason="the atari extra: pip install 'rl-training[atari]'")

FRAMES = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "BreakoutNoFrameskip-v4"])
def test_atari_ids_work_as_they_are_with_the_preprocessed_space(env_id):
    plan = resolve_plan(tiny_config(env_id=env_id))
    assert plan.observation_space == FRAMES
    assert isinstance(plan.action_space, gym.spaces.Discrete)


def test_a_lost_life_ends_a_training_episode_not_the_game():
    """Training: an episode per life, clipped rewards, the game's own score and length
    in the info of the step that ends it; evaluation: the whole game, raw rewards."""
    env = make_env("BreakoutNoFrameskip-v4")
    env.action_space.seed(0)
    env.reset(seed=0)
    lives_ended, games, clipped, steps = 0, [], 0.0, 0
    while len(games) < 2:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert reward in (0.0, 1.0)  # Breakout's 1, 4 and 7 points, clipped
        clipped += float(reward)
        steps += 1
        if terminated or truncated:
            lives_ended += 1
            if GAME_RETURN in info:
                games.append((info[GAME_RETURN], info[GAME_LENGTH], clipped, steps, lives_ended))
                clipped, steps, lives_ended = 0.0, 0, 0
            env.reset()
    for score, length, clipped_sum, agent_steps, episodes in games:
        assert episodes == 5  # Breakout's five lives
        assert score >= clipped_sum and length >= agent_steps > 0
    evaluation = make_env("BreakoutNoFrameskip-v4", training=False)
    evaluation.reset(seed=0)
    ended = False
    for _ in range(5000):
        _, reward, terminated, truncated, info = evaluation.step(3)  # LEFT: loses every ball
        assert GAME_RETURN not in info
        if terminated or truncated:
            ended = True
            break
    assert ended and evaluation.unwrapped.ale.lives() == 0  # type: ignore[attr-defined]


def test_evaluation_sees_after_a_lost_life_what_training_saw():
    """After a lost life, evaluation's observation is training's next episode's first
    one (the no-op, FIRE, a fresh frame stack), the game goes on, and the episode's
    rewards add up to the game's score. An agent that learned behind the training
    wrappers is evaluated behind the same ones (a continued stack scored a PPO model
    14.4 against 18.9 in SB3's evaluation)."""
    training = make_env("BreakoutNoFrameskip-v4")
    evaluation = make_env("BreakoutNoFrameskip-v4", training=False)
    np.testing.assert_array_equal(training.reset(seed=5)[0], evaluation.reset(seed=5)[0])
    rng = np.random.default_rng(0)
    lives_checked, total, lives = 0, 0.0, None
    for _ in range(20_000):
        action = int(rng.integers(4))
        seen, reward, terminated, truncated, _ = evaluation.step(action)
        total += float(reward)
        if terminated or truncated:
            break
        if lives_checked < 4:
            obs, _, life_lost, _, info = training.step(action)
            if life_lost:
                assert GAME_RETURN not in info  # a life, not the game
                np.testing.assert_array_equal(seen, training.reset()[0])
                assert (seen[0] == seen[1]).all()  # the stack starts afresh
                lives_checked += 1
            else:
                np.testing.assert_array_equal(seen, obs)
        lives = evaluation.unwrapped.ale.lives()  # type: ignore[attr-defined]
    assert lives_checked == 4 and terminated and lives == 1  # the fifth life ended it
    assert total > 0 and total == int(total)  # raw, unclipped points (1, 4, 7 a brick)


def test_ppo_on_breakout_logs_game_scores_evaluates_and_films_the_real_frames(tmp_path):
    from PIL import Image as PILImage

    result = train(tiny_config(
        env_id="BreakoutNoFrameskip-v4", total_timesteps=768, output_dir=tmp_path,
        hyperparams={"num_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 1,
                     "net_arch": []},
        video_every=768, video_length=12, eval_every=768, eval_episodes=1,
    ))  # fmt: skip
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    games = [row for row in rows if "episode/return" in row]
    assert games, "no game ended in 768 steps of random Breakout"
    # whole games: a random agent's game lasts five lives (well over 100 steps)
    assert all(row["episode/length"] > 100 for row in games)
    assert any(row.get("eval/mean_return") is not None for row in rows)
    media = [strict_json_loads(x) for x in (result.run_dir / "media.jsonl").read_text().split()]
    gif = PILImage.open(io.BytesIO((result.run_dir / media[0]["path"]).read_bytes()))
    assert gif.size == (160, 210)  # the game's own frames, not the 84x84 input
    policy = load_policy(result.run_dir)
    obs, _ = make_env("BreakoutNoFrameskip-v4", training=False).reset(seed=1)
    assert policy.predict(obs) in range(4)
    assert policy.predict(np.stack([obs, obs])).shape == (2,)
    assert evaluate(result.run_dir, n_episodes=1).lengths[0] > 0


def test_dqn_on_pong_keeps_each_frame_once_as_uint8_and_resumes(tmp_path):
    result = train(tiny_config(
        algo="dqn", env_id="ALE/Pong-v5", total_timesteps=200, output_dir=tmp_path,
        hyperparams={"learning_starts": 100, "batch_size": 8, "buffer_size": 1000},
    ))  # fmt: skip
    checkpoint = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    buffer = checkpoint["trainer"]["buffer"]
    assert buffer["frames"].dtype == torch.uint8 and buffer["frames"].shape == (200, 84, 84)
    assert "obs" not in buffer and "next_obs" not in buffer
    assert resume(result.run_dir, total_timesteps=260).steps == 260


def test_the_frame_buffer_holds_what_whole_stacks_would_on_real_breakout():
    """Real Breakout (life losses, FIRE resets, no-op starts) through the frame buffer
    and the whole-stack one: every observation is a shift or an episode's first
    frame repeated, and both sample the same transitions."""
    from rl_training.trainers.buffers import FrameReplayBuffer, ImageReplayBuffer
    from rl_training.trainers.envs import make_vec_env
    from rl_training.trainers.observations import layout

    n, cpu = 2, torch.device("cpu")
    envs = make_vec_env("BreakoutNoFrameskip-v4", n, seed=3)
    stacks = ImageReplayBuffer(150, layout(FRAMES), n, (), True, cpu)
    frames = FrameReplayBuffer(150, layout(FRAMES), n, (), True, cpu)
    obs = envs.reset(seed=3)[0].copy()  # the vector env's own array: copied
    rng, ends = np.random.default_rng(0), 0
    for t in range(400):
        actions = rng.integers(0, 4, n)
        raw, reward, terminated, truncated, infos = envs.step(actions)
        raw = raw.copy()
        done = terminated | truncated
        next_obs = raw.copy()
        for i in np.flatnonzero(done):
            next_obs[i] = infos["final_obs"][i]
        ends += int(done.sum())
        for buffer in (stacks, frames):
            buffer.add(torch.from_numpy(obs), torch.from_numpy(next_obs),
                       torch.from_numpy(actions), reward, terminated, truncated)  # fmt: skip
        obs = raw
        if t % 40 == 39:
            a = stacks.sample(64, torch.Generator().manual_seed(t))
            b = frames.sample(64, torch.Generator().manual_seed(t))
            for name, x, y in zip(a._fields, a, b, strict=True):
                assert torch.equal(x, y), (name, t)
    assert ends >= 2  # lives lost (episode ends) on the way
    assert frames.state_dict()["frames"].nbytes * 3 < stacks.state_dict()["obs"].nbytes


def test_a_replay_buffer_too_large_for_memory_is_one_line_and_no_run(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rl_training", "--algo", "dqn", "--env-id", "ALE/Pong-v5",
         "--total-timesteps", "1000", "--output-dir", str(tmp_path / "runs"),
         "--hp", "buffer_size=100000000"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "A.L.E" not in line
             and "Powered by Stella" not in line]  # fmt: skip
    assert len(lines) == 1 and "buffer_size" in lines[0], proc.stderr
    assert "4x84x84 uint8" in lines[0] and "the largest buffer_size that fits is" in lines[0]
    assert not (tmp_path / "runs").exists()
    json.dumps(lines)  # plain text


def test_an_atari_id_without_ale_py_names_the_extra_to_install(tmp_path):
    """Where ale-py cannot be imported (here: blocked in a fresh interpreter), an ALE
    id is one line naming rl-training[atari], and nothing is written."""
    code = (
        "import sys; sys.modules['ale_py'] = None\n"
        "from rl_training.cli import main\n"
        f"sys.exit(main(['--algo', 'ppo', '--env-id', 'ALE/Pong-v5', '--seed', '0', "
        f"'--total-timesteps', '100', '--output-dir', {str(tmp_path / 'runs')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "ale-py is not installed" in proc.stderr and "rl-training[atari]" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
