"""Environments for the torchrun tests (imported by ``--env-id dist_envs:...``)."""

from __future__ import annotations

import os

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
