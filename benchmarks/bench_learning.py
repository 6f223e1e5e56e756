"""Do the trainers learn? Default hyperparameters, 3 seeds, 20 deterministic eval episodes.

Each (algorithm, seed) trains in its own process, two at a time (one per core).
Prints every seed's evaluation, the median, the target and the reference figures
Stable-Baselines3 reached on this machine.

    python benchmarks/bench_learning.py [ppo a2c ...] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# algo -> (env id, budget, target median eval return, SB3's figures here)
CASES: dict[str, tuple[str, int, float, str]] = {
    "ppo": ("CartPole-v1", 50_000, 475.0, "500/500/500 (SB3 defaults, 1 env, 51k steps)"),
    "a2c": ("CartPole-v1", 100_000, 475.0, "492/500/500 (SB3, 8 envs, 100k steps)"),
    "dqn": ("CartPole-v1", 50_000, 475.0, "500/500/500 (SB3, rl-zoo settings)"),
    "sac": ("Pendulum-v1", 10_000, -200.0, "-123/-188/-118 (SB3 defaults)"),
    "td3": ("Pendulum-v1", 10_000, -200.0, "-123/-190/-125 (SB3 defaults)"),
}


def one_run(algo: str, seed: int, root: str, threads: int) -> tuple[str, int, float, float, int]:
    import torch

    from rl_training import TrainConfig
    from rl_training.trainers import evaluate, train

    # Two runs side by side on two cores: one thread each, or OpenMP threads fight
    # over the cores and every run crawls. (The results do not depend on it.)
    torch.set_num_threads(threads)

    env_id, budget, _, _ = CASES[algo]
    config = TrainConfig(
        algo=algo,
        env_id=env_id,
        seed=seed,
        total_timesteps=budget,
        output_dir=Path(root) / algo,
        device="cpu",
    )
    result = train(config)
    evaluation = evaluate(result.run_dir, n_episodes=20, deterministic=True, seed=1000)
    return algo, seed, evaluation.mean_return, result.wall_time_s, result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algos", nargs="*", default=["ppo", "a2c"], choices=sorted(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.workers) as pool:
        futures = [
            pool.submit(one_run, a, s, root, threads) for a in args.algos for s in args.seeds
        ]
        results = []
        for future in as_completed(futures):
            results.append(future.result())
            algo, seed, score, wall, steps = results[-1]
            print(f"  {algo} seed {seed}: {score:.1f} ({wall:.0f}s, {steps} steps)", flush=True)
    for algo in args.algos:
        env_id, budget, target, reference = CASES[algo]
        runs = sorted(r for r in results if r[0] == algo)
        scores = [r[2] for r in runs]
        median = statistics.median(scores)
        verdict = "PASS" if median >= target else "FAIL"
        print(
            f"{algo} {env_id} {budget} steps: "
            + "  ".join(f"seed {r[1]}: {r[2]:.1f} ({r[3]:.0f}s, {r[4]} steps)" for r in runs)
        )
        print(f"  median {median:.1f}  target >= {target:g}  {verdict}   reference: {reference}")


if __name__ == "__main__":
    main()
