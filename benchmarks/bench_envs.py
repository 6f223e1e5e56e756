"""Beyond classic control, side by side with SB3: Atari (PPO, DQN) and MuJoCo (PPO, SAC).

Both sides use RL Baselines3 Zoo's hyperparameters for the task (ours through
``--preset``, SB3 through the zoo's own values), the same env ids, seeds and budgets.
Each (library, case, seed) trains in its own process, one after the other (their
speed is compared); the final score is the library's own evaluation of the final
model: whole games with the real score for Atari (ours: ``evaluate``; SB3:
``evaluate_policy``, which reads the ``Monitor`` under its ``AtariWrapper``), 30
deterministic episodes (``--eval-episodes``; each episode's score is in the row's
``scores``: ten Breakout games of one model swung a seed's result by 1.5x). steps/s
is ``total_timesteps`` over the training's wall time (evaluation not counted).
Results are appended as JSON lines to ``--out``.

    python benchmarks/bench_envs.py CASE [CASE ...] [--seeds 0 1] [--libs ours sb3]
        [--steps N] [--eval-episodes 30] [--keep DIR] [--precision bf16]
        [--out bench_envs.jsonl]

Cases: breakout-ppo (500k), hopper-ppo (300k), halfcheetah-sac (50k), breakout-dqn
(100k; both sides learn from 10k steps on, not the zoo's 100k, so that 100k steps
train at all). ``--steps`` shortens every case (a throughput-only run). ``--keep DIR``
keeps each final model (ours: the run directory; SB3: ``model.save``) under ``DIR``.
``--precision bf16`` trains ours with ``precision="bf16"`` (SB3 stays fp32).
Needs ``pip install stable-baselines3 'rl-training[atari,mujoco]'``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

# case -> (algo, env id, steps, extra hyperparameters on top of the preset)
CASES: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    "breakout-ppo": ("ppo", "BreakoutNoFrameskip-v4", 500_000, {}),
    "hopper-ppo": ("ppo", "Hopper-v5", 300_000, {}),
    "halfcheetah-sac": ("sac", "HalfCheetah-v5", 50_000, {}),
    "breakout-dqn": ("dqn", "BreakoutNoFrameskip-v4", 100_000, {"learning_starts": 10_000}),
}
PRESET = {"breakout-ppo": "atari", "breakout-dqn": "atari", "hopper-ppo": "mujoco",
          "halfcheetah-sac": "mujoco"}  # fmt: skip


def ours(
    case: str, seed: int, steps: int, episodes: int, keep: Path | None, precision: str = "fp32"
) -> dict[str, Any]:
    from rl_training import TrainConfig, train
    from rl_training.presets import preset_hyperparams
    from rl_training.trainers import evaluate

    algo, env_id, _, extra = CASES[case]
    hp = {**preset_hyperparams(PRESET[case], algo), **extra, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        out = keep / f"ours-{precision}-{case}-{seed}" if keep else Path(tmp)
        start = time.perf_counter()
        result = train(
            TrainConfig(
                algo=algo,
                env_id=env_id,
                seed=seed,
                total_timesteps=steps,
                hyperparams=hp,
                output_dir=out,
                log_sinks=("json",),
            )
        )
        seconds = time.perf_counter() - start
        scores = evaluate(result.run_dir, n_episodes=episodes).returns
    # the mean return of the last 20 training episodes (whole games on Atari)
    return {"sps": steps / seconds, "score": sum(scores) / len(scores), "seconds": seconds,
            "train_return": result.mean_return, "scores": scores}  # fmt: skip


def _linear(start: float) -> Any:
    return lambda progress: progress * start  # SB3's progress goes from 1 to 0


def sb3_atari_env(env_id: str, seed: int, n_envs: int = 1) -> Any:
    """SB3's Atari env as rl-zoo makes it: ``make_atari_env`` (its ``AtariWrapper``,
    a ``Monitor`` under it) and ``VecFrameStack(4)``; evaluation's is seeded ``seed + 1000``."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env(env_id, n_envs=n_envs, seed=seed), 4)


def sb3(case: str, seed: int, steps: int, episodes: int, keep: Path | None) -> dict[str, Any]:
    import torch.nn as nn
    from stable_baselines3 import DQN, PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    algo, env_id, _, extra = CASES[case]
    if env_id.startswith("Breakout"):
        env = sb3_atari_env(env_id, seed, n_envs=8 if algo == "ppo" else 1)
        eval_env = sb3_atari_env(env_id, seed + 1000)
    else:
        env = make_vec_env(env_id, n_envs=1, seed=seed)
        eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1000)
    if case == "breakout-ppo":  # rl-zoo ppo.yml, atari
        model = PPO("CnnPolicy", env, n_steps=128, n_epochs=4, batch_size=256,
                    learning_rate=_linear(2.5e-4), clip_range=_linear(0.1), vf_coef=0.5,
                    ent_coef=0.01, seed=seed, verbose=0)  # fmt: skip
    elif case == "breakout-dqn":  # rl-zoo dqn.yml, atari
        model = DQN("CnnPolicy", env, buffer_size=100_000, learning_rate=1e-4, batch_size=32,
                    learning_starts=extra["learning_starts"], target_update_interval=1000,
                    train_freq=4, gradient_steps=1, exploration_fraction=0.1,
                    exploration_final_eps=0.01, optimize_memory_usage=False, seed=seed,
                    verbose=0)  # fmt: skip
    elif case == "hopper-ppo":  # rl-zoo ppo.yml, Hopper
        env = VecNormalize(env, gamma=0.999)  # rl-zoo passes the algorithm's gamma
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        model = PPO("MlpPolicy", env, batch_size=32, n_steps=512, gamma=0.999,
                    learning_rate=9.80828e-05, ent_coef=0.00229519, clip_range=0.2, n_epochs=5,
                    gae_lambda=0.99, max_grad_norm=0.7, vf_coef=0.835671, seed=seed, verbose=0,
                    policy_kwargs={"log_std_init": -2, "ortho_init": False,
                                   "activation_fn": nn.ReLU,
                                   "net_arch": {"pi": [256, 256], "vf": [256, 256]}})  # fmt: skip
    else:  # rl-zoo sac.yml, MuJoCo
        model = SAC("MlpPolicy", env, learning_starts=10_000, seed=seed, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - start
    if keep:
        model.save(keep / f"sb3-{case}-{seed}")
    if isinstance(env, VecNormalize):
        eval_env.obs_rms = env.obs_rms
    scores, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
    )
    recent = [info["r"] for info in model.ep_info_buffer][-20:]  # Monitor: whole games
    return {
        "sps": steps / seconds,
        "score": float(sum(scores) / len(scores)),
        "seconds": seconds,
        "train_return": float(sum(recent) / len(recent)) if recent else None,
        "scores": [float(score) for score in scores],
    }


def _one(
    lib: str, case: str, seed: int, steps: int, episodes: int, keep: Path | None, precision: str
) -> dict[str, Any]:
    if lib == "ours":
        result = ours(case, seed, steps, episodes, keep, precision)
        return {"lib": lib, "precision": precision, "case": case, "seed": seed, "steps": steps,
                **result}  # fmt: skip
    result = sb3(case, seed, steps, episodes, keep)
    return {"lib": lib, "case": case, "seed": seed, "steps": steps, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", choices=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--libs", nargs="+", default=["ours", "sb3"], choices=["ours", "sb3"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", type=Path, default=Path("bench_envs.jsonl"))
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for case in args.cases:
        steps = args.steps or CASES[case][2]
        for seed in args.seeds:
            for lib in args.libs:
                with context.Pool(1) as pool:  # a fresh process each: no shared state
                    row = pool.apply(
                        _one,
                        (lib, case, seed, steps, args.eval_episodes, args.keep, args.precision),
                    )
                print(json.dumps(row), flush=True)
                with args.out.open("a") as out:
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
