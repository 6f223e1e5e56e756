"""Atari models of both libraries, each in both libraries' evaluations.

``bench_envs.py`` scores each library's final model by that library's own evaluation.
The two evaluations differ in more than their seeds (ours pads a fresh frame stack
with the first frame, SB3's ``VecFrameStack`` with zeros; ours takes ALE's grayscale
screen, SB3 converts the colour one), so this plays every model kept by
``bench_envs.py --keep DIR`` in both: ours through ``evaluate`` (whole games, game
``i`` reset with seed ``i``), SB3's through ``evaluate_policy`` on
``make_atari_env(seed=seed + 1000)`` with ``VecFrameStack(4)`` (its ``Monitor``
under the ``AtariWrapper``: whole games), deterministic, as ``bench_envs.py`` does.
One JSON line per (model, evaluation) to stdout and ``--out``.

    python benchmarks/cross_eval.py DIR [--case breakout-ppo] [--seeds 0 1]
        [--eval-episodes 30] [--out cross_eval.jsonl]

Needs ``pip install stable-baselines3 'rl-training[atari]'``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_envs import CASES, sb3_atari_env

Act = Callable[[np.ndarray], np.ndarray]
"""A batch of ``(4, 84, 84)`` ``uint8`` stacks -> a batch of actions."""


def in_ours(env_id: str, act: Act, episodes: int) -> list[float]:
    """Whole games in our evaluation (the envs and loop of ``evaluate``)."""
    import torch

    from rl_training.trainers.evaluation import make_eval_envs, run_episodes

    envs = make_eval_envs(env_id, episodes)
    try:
        returns, _ = run_episodes(
            envs, lambda obs, _det, _gen: act(obs), 0, True, torch.Generator()
        )
    finally:
        envs.close()
    return returns


def in_sb3(env_id: str, act: Act, seed: int, episodes: int) -> list[float]:
    """Whole games in SB3's evaluation, as ``bench_envs.py`` scores SB3."""
    from stable_baselines3.common.evaluation import evaluate_policy

    class Predictor:  # evaluate_policy's model: channels-last stacks in
        def predict(self, obs: np.ndarray, *_: Any, **__: Any) -> tuple[np.ndarray, None]:
            return act(np.ascontiguousarray(obs.transpose(0, 3, 1, 2))), None

    env = sb3_atari_env(env_id, seed + 1000)
    try:
        scores, _ = evaluate_policy(
            Predictor(),  # type: ignore[arg-type]
            env,
            n_eval_episodes=episodes,
            deterministic=True,
            return_episode_rewards=True,
        )
    finally:
        env.close()
    return [float(score) for score in scores]


def ours_act(run_dir: Path) -> Act:
    from rl_training.trainers import load_policy

    policy = load_policy(run_dir)
    return lambda obs: policy.predict(obs, deterministic=True)


def sb3_act(path: Path) -> Act:
    from stable_baselines3 import DQN, PPO

    model = (PPO if "ppo" in path.name else DQN).load(path, device="cpu")
    return lambda obs: model.predict(obs, deterministic=True)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keep", type=Path)
    parser.add_argument("--case", default="breakout-ppo", choices=["breakout-ppo", "breakout-dqn"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("cross_eval.jsonl"))
    args = parser.parse_args()
    env_id = CASES[args.case][1]
    for seed in args.seeds:
        models: dict[str, Path] = {"sb3": args.keep / f"sb3-{args.case}-{seed}.zip"}
        for ours in sorted(args.keep.glob(f"ours-*-{args.case}-{seed}")):
            models[ours.name.split(f"-{args.case}")[0]] = only_run(ours)
        for name, path in models.items():
            if not path.exists():
                continue
            act = sb3_act(path) if name == "sb3" else ours_act(path)
            for evaluation in ("ours", "sb3"):
                if evaluation == "ours":
                    scores = in_ours(env_id, act, args.eval_episodes)
                else:
                    scores = in_sb3(env_id, act, seed, args.eval_episodes)
                row = {"model": name, "evaluation": evaluation, "case": args.case, "seed": seed,
                       "score": sum(scores) / len(scores), "scores": scores}  # fmt: skip
                print(json.dumps(row), flush=True)
                with args.out.open("a") as out:
                    out.write(json.dumps(row) + "\n")


def only_run(keep_dir: Path) -> Path:
    """The run directory ``train`` made under a kept ``output_dir``."""
    (run,) = (path for path in keep_dir.iterdir() if (path / "model.pt").is_file())
    return run


if __name__ == "__main__":
    main()
