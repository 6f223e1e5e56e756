"""Test environments with pixel, Dict and unsupported observation spaces.

Imported by name (``obs_envs:Pixels-v0``), so child processes and ``rl-train`` find
them too. Each is tiny and fast; what they teach is not the point.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import register


class Pixels(gym.Env[np.ndarray, np.int64]):
    """A lit column on a dark image; reward 1 for the action naming its half.

    ``channels_first``: ``(3, 40, 44)`` instead of ``(40, 44, 3)``; ``continuous``:
    a Box action, its sign naming the half. Episodes end
    at 12 steps (a time limit), or when the agent is wrong three times (terminated).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        channels_first: bool = False,
        continuous: bool = False,
        render_mode: str | None = None,
    ) -> None:
        self.channels_first = channels_first
        shape = (3, 40, 44) if channels_first else (40, 44, 3)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.action_space: gym.Space[Any] = (
            gym.spaces.Box(-1.0, 1.0, (1,), np.float32) if continuous else gym.spaces.Discrete(2)
        )
        self.render_mode = render_mode
        self._column = 0
        self._wrong = 0

    def _image(self) -> np.ndarray:
        image = np.full((40, 44, 3), 20, np.uint8)
        image[:, self._column, :] = 250
        return np.ascontiguousarray(image.transpose(2, 0, 1)) if self.channels_first else image

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._column = int(self.np_random.integers(44))
        self._wrong = 0
        return self._image(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if isinstance(self.action_space, gym.spaces.Box):
            action = float(np.asarray(action).reshape(-1)[0]) > 0
        right = int(action) == int(self._column >= 22)
        self._wrong += not right
        self._column = int(self.np_random.integers(44))
        return self._image(), float(right), self._wrong >= 3, False, {}

    def render(self) -> np.ndarray:
        image = self._image()
        return image.transpose(1, 2, 0) if self.channels_first else image


class Reach(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """A goal-conditioned point (as gymnasium-robotics' envs): Dict observations of
    ``observation``, ``achieved_goal``, ``desired_goal`` and a Discrete ``phase``;
    ``discrete`` actions (4 directions) or Box ones (a 2-d velocity)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, discrete: bool = False, render_mode: str | None = None) -> None:
        box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Dict(
            {
                "observation": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
                "achieved_goal": box,
                "desired_goal": box,
                "phase": gym.spaces.Discrete(3),
            }
        )
        self.action_space: gym.Space[Any] = (
            gym.spaces.Discrete(4) if discrete else gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        )
        self.render_mode = render_mode
        self._pos = np.zeros(2, np.float32)
        self._goal = np.zeros(2, np.float32)
        self._t = 0

    def _obs(self) -> dict[str, Any]:
        return {
            "observation": np.concatenate([self._pos, self._goal - self._pos]).astype(np.float32),
            "achieved_goal": self._pos.copy(),
            "desired_goal": self._goal.copy(),
            "phase": self._t % 3,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        self._goal = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        self._t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if isinstance(self.action_space, gym.spaces.Discrete):
            move = np.array([[0.1, 0], [-0.1, 0], [0, 0.1], [0, -0.1]], np.float32)[int(action)]
        else:
            move = 0.1 * np.clip(np.asarray(action, np.float32), -1, 1)
        self._pos = np.clip(self._pos + move, -1, 1).astype(np.float32)
        self._t += 1
        distance = float(np.linalg.norm(self._goal - self._pos))
        reached = distance < 0.1
        return self._obs(), -distance, reached, False, {"is_success": float(reached)}

    def render(self) -> np.ndarray:
        image = np.zeros((48, 48, 3), np.uint8)
        x, y = ((self._pos + 1) * 23.5).astype(int)
        image[y, x] = 255
        return image


class Seeing(Reach):
    """:class:`Reach` with a camera: a Dict of a 40x40 RGB image and a vector."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(discrete=True, render_mode=render_mode)
        self.observation_space = gym.spaces.Dict(
            {
                "camera": gym.spaces.Box(0, 255, (40, 40, 3), np.uint8),
                "state": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
            }
        )

    def _obs(self) -> dict[str, Any]:
        obs = super()._obs()
        image = np.zeros((40, 40, 3), np.uint8)
        x, y = ((self._pos + 1) * 19.5).astype(int)
        gx, gy = ((self._goal + 1) * 19.5).astype(int)
        image[y, x, 0] = 255
        image[gy, gx, 1] = 255
        return {"camera": image, "state": obs["observation"]}


class Tupled(Reach):
    """A Tuple observation space, which rl-training does not read."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(discrete=True, render_mode=render_mode)
        self.observation_space = gym.spaces.Tuple(  # type: ignore[assignment]
            (gym.spaces.Discrete(2), gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
        )


register(id="Pixels-v0", entry_point=Pixels, max_episode_steps=12)
register(id="PixelsCHW-v0", entry_point=Pixels, max_episode_steps=12,
         kwargs={"channels_first": True})  # fmt: skip
register(id="PixelsContinuous-v0", entry_point=Pixels, max_episode_steps=12,
         kwargs={"continuous": True})  # fmt: skip
register(id="Reach-v0", entry_point=Reach, max_episode_steps=30)
register(id="ReachDiscrete-v0", entry_point=Reach, max_episode_steps=30,
         kwargs={"discrete": True})  # fmt: skip
register(id="Seeing-v0", entry_point=Seeing, max_episode_steps=30)
register(id="Tupled-v0", entry_point=Tupled, max_episode_steps=30)
