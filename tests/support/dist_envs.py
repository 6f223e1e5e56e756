"""Environments for the torchrun tests (imported by ``--env-id dist_envs:...``)."""

from __future__ import annotations

import os

import numpy as np
from gymnasium.envs.classic_control import CartPoleEnv
from gymnasium.envs.registration import register


class CrashOnRankOne(CartPoleEnv):
    """CartPole whose copies on rank 1 raise after 300 steps: one rank failing mid-run."""

    steps = 0

    def step(self, action):  # noqa: ANN001, ANN201  # gymnasium's signature
        if os.environ.get("RANK") == "1":
            CrashOnRankOne.steps += 1
            if CrashOnRankOne.steps > 300:
                raise RuntimeError("dist_envs: rank 1 fails on purpose")
        return super().step(action)


register(id="CrashOnRankOne-v0", entry_point=CrashOnRankOne, max_episode_steps=500)


class Goal(CartPoleEnv):
    """CartPole whose finished episodes report ``is_success`` (lasting 20 steps or more)
    and ``distance`` (the cart's final position) in their info, as goal-reaching envs do."""

    def reset(self, **kwargs):  # noqa: ANN003, ANN201  # gymnasium's signature
        self.episode_steps = 0
        return super().reset(**kwargs)

    def step(self, action):  # noqa: ANN001, ANN201  # gymnasium's signature
        obs, reward, terminated, truncated, info = super().step(action)
        self.episode_steps += 1
        if terminated or truncated:
            info = {**info, "is_success": self.episode_steps >= 20, "distance": float(obs[0]),
                    "label": "not a number"}  # fmt: skip
        return obs, reward, terminated, truncated, info


register(id="Goal-v0", entry_point=Goal, max_episode_steps=200)


class Painted(CartPoleEnv):
    """CartPole that renders rgb_array frames with numpy alone (no pygame): a 40x60
    picture with the cart as a bar at its position."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def render(self):  # noqa: ANN201  # gymnasium's signature
        frame = np.zeros((40, 60, 3), np.uint8)
        x = int(np.clip((self.state[0] + 2.4) / 4.8 * 59, 0, 59))
        frame[20:30, max(0, x - 3) : x + 3] = (255, 128, 0)
        return frame


class Witnessed(Painted):
    """Painted that appends the id of the process rendering it to the file named by
    ``RL_TEST_RENDER_PIDS``; with ``RL_TEST_RENDER_FAIL_AT`` set, its n-th frame of an
    episode raises."""

    def reset(self, **kwargs):  # noqa: ANN003, ANN201  # gymnasium's signature
        self.frames = 0
        return super().reset(**kwargs)

    def render(self):  # noqa: ANN201  # gymnasium's signature
        self.frames += 1
        if self.frames == int(os.environ.get("RL_TEST_RENDER_FAIL_AT", "0")):
            raise RuntimeError(f"the projector broke at frame {self.frames}")
        with open(os.environ["RL_TEST_RENDER_PIDS"], "a") as f:
            f.write(f"{os.getpid()}\n")
        return super().render()


class Blind(CartPoleEnv):
    """CartPole that renders nothing."""

    metadata = {"render_modes": [], "render_fps": 50}


register(id="Painted-v0", entry_point=Painted, max_episode_steps=500)
register(id="Blind-v0", entry_point=Blind, max_episode_steps=500)
register(id="Witnessed-v0", entry_point=Witnessed, max_episode_steps=500)
