"""Do the trainers learn, on every seed? Ours and Stable-Baselines3 on one protocol.

Same environments, seeds and budgets; each library with its own defaults (rl-zoo's
settings for SB3 where the issue names them: DQN, A2C with 8 envs, SAC and TD3 on
Pendulum); the same evaluation for both: 20 deterministic episodes, episode i on a
fresh env reset with seed 1000 + i. Prints every seed, the median, the worst seed
and the interquartile mean (IQM) with a 95 % bootstrap confidence interval
(rl_training.report's statistics, scipy), and the goals of issue 13.

Each (library, algorithm, seed) trains in its own process, two at a time (one per
core). SB3 is only imported here: ``pip install stable-baselines3`` (and the
``report`` extra for the statistics).

    python benchmarks/bench_learning.py [ppo a2c dqn sac td3] [--seeds 0 1 2 3 4]
        [--libs ours sb3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

# algo -> (env id, budget, bar for the median, bar for the worst seed)
CASES: dict[str, tuple[str, int, float, float]] = {
    "ppo": ("CartPole-v1", 50_000, 475.0, 400.0),
    "a2c": ("CartPole-v1", 100_000, 475.0, 400.0),
    "dqn": ("CartPole-v1", 50_000, 475.0, 400.0),
    "sac": ("Pendulum-v1", 10_000, -200.0, -250.0),
    "td3": ("Pendulum-v1", 10_000, -200.0, -250.0),
}
EVAL_EPISODES = 20
EVAL_SEED = 1000

# SB3: its defaults, with rl-zoo's settings where our defaults are rl-zoo's.
SB3_ENVS = {"a2c": 8}
SB3_KWARGS: dict[str, dict[str, Any]] = {
    "dqn": {
        "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000,
        "learning_starts": 1000, "gamma": 0.99, "target_update_interval": 10,
        "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04, "policy_kwargs": {"net_arch": [256, 256]},
    },
    "sac": {"learning_rate": 1e-3},
    "td3": {"learning_rate": 1e-3},  # and Gaussian action noise of 0.1, below
}  # fmt: skip


def evaluate(env_id: str, predict: Callable[[np.ndarray], Any]) -> float:
    """Mean return of ``EVAL_EPISODES`` deterministic episodes, episode i seeded 1000 + i."""
    import gymnasium as gym

    returns = []
    env = gym.make(env_id)
    try:
        for i in range(EVAL_EPISODES):
            obs, _ = env.reset(seed=EVAL_SEED + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(predict(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return float(np.mean(returns))


def run_ours(algo: str, seed: int, root: Path, hp: dict[str, Any]) -> float:
    from rl_training import TrainConfig, load_policy, train

    env_id, budget, _, _ = CASES[algo]
    config = TrainConfig(algo=algo, env_id=env_id, seed=seed, total_timesteps=budget,
                         output_dir=root / "ours" / algo, device="cpu",
                         log_sinks=["json"], hyperparams=hp)  # fmt: skip
    result = train(config)
    policy = load_policy(result.run_dir)
    return evaluate(env_id, lambda obs: policy.predict(obs, deterministic=True))


def run_sb3(algo: str, seed: int, root: Path, hp: dict[str, Any]) -> float:
    import stable_baselines3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise

    env_id, budget, _, _ = CASES[algo]
    kwargs = dict(SB3_KWARGS.get(algo, {}))
    env = make_vec_env(env_id, n_envs=SB3_ENVS.get(algo, 1), seed=seed)
    if algo == "td3":
        n = env.action_space.shape[0]
        kwargs["action_noise"] = NormalActionNoise(np.zeros(n), 0.1 * np.ones(n))
    cls = getattr(stable_baselines3, algo.upper())
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    model.learn(total_timesteps=budget)
    return evaluate(env_id, lambda obs: model.predict(obs, deterministic=True)[0])


def one_run(
    lib: str, algo: str, seed: int, root: str, threads: int, hp: dict[str, Any]
) -> tuple[str, str, int, float, float]:
    import torch

    # Two runs side by side on two cores: one thread each, or OpenMP threads fight
    # over the cores and every run crawls. (The results do not depend on it.)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    score = (run_ours if lib == "ours" else run_sb3)(algo, seed, Path(root), hp)
    return lib, algo, seed, score, time.perf_counter() - start


def describe(scores: list[float], worst_bar: float) -> str:
    """Median, worst seed, IQM with its CI, and how many seeds clear the worst-seed bar
    (the success rate: over many seeds, the steadier comparison of two libraries)."""
    from rl_training.report import bootstrap_ci, iqm

    values = np.array(scores)
    low, high = bootstrap_ci(values, iqm)
    middle = float(iqm(values))
    cleared = int((values >= worst_bar).sum())
    return (f"median {statistics.median(scores):8.1f}  worst {min(scores):8.1f}  "
            f"IQM {middle:8.1f} [95% CI {float(low):.1f}, {float(high):.1f}]  "
            f">= {worst_bar:g}: {cleared}/{len(scores)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algos", nargs="*", help=f"of {', '.join(CASES)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--libs", nargs="+", default=["ours", "sb3"], choices=["ours", "sb3"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter of ours to try instead of the default "
                        "(one algorithm at a time)")  # fmt: skip
    args = parser.parse_args()
    args.algos = args.algos or list(CASES)
    if unknown := [a for a in args.algos if a not in CASES]:
        parser.error(f"unknown algorithm {unknown[0]!r}: choose from {', '.join(CASES)}")
    from rl_training.cli import parse_hyperparams

    hp = parse_hyperparams(args.algos[0], args.hp) if args.hp else {}
    if hp and len(args.algos) != 1:
        parser.error("--hp goes with one algorithm")
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    jobs = [(lib, a, s) for a in args.algos for s in args.seeds for lib in args.libs]
    results: dict[tuple[str, str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one_run, lib, a, s, root, threads, hp) for lib, a, s in jobs]
        for future in as_completed(futures):
            lib, algo, seed, score, wall = future.result()
            results[(lib, algo, seed)] = (score, wall)
            print(f"  {lib:4} {algo} seed {seed}: {score:8.1f} ({wall:.0f}s)", flush=True)
    for algo in args.algos:
        env_id, budget, bar, worst_bar = CASES[algo]
        print(f"\n{algo} {env_id}, {budget:,} steps, {len(args.seeds)} seeds, "
              f"{EVAL_EPISODES} deterministic episodes")  # fmt: skip
        print("  seed " + "".join(f"{lib:>10}" for lib in args.libs))
        for seed in args.seeds:
            print(f"  {seed:4} " + "".join(f"{results[(lib, algo, seed)][0]:10.1f}"
                                           for lib in args.libs))  # fmt: skip
        scores = {lib: [results[(lib, algo, s)][0] for s in args.seeds] for lib in args.libs}
        for lib in args.libs:
            print(f"  {lib:4}  {describe(scores[lib], worst_bar)}")
        if "ours" in scores:
            ours = scores["ours"]
            yes = {True: "yes", False: "NO"}
            goals = [f"median >= {bar:g}: {yes[statistics.median(ours) >= bar]}",
                     f"worst >= {worst_bar:g}: {yes[min(ours) >= worst_bar]}"]  # fmt: skip
            if "sb3" in scores:
                from rl_training.report import iqm

                sb3 = scores["sb3"]
                better_iqm = float(iqm(np.array(ours))) >= float(iqm(np.array(sb3)))
                goals += [f"IQM >= SB3's: {yes[better_iqm]}",
                          f"worst >= SB3's: {yes[min(ours) >= min(sb3)]}"]  # fmt: skip
            print("  goals: " + "; ".join(goals))


if __name__ == "__main__":
    main()
