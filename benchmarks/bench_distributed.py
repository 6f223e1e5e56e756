"""Distributed training under torchrun on this machine: scaling, learning, row cost.

    python benchmarks/bench_distributed.py [scaling] [learning] [rows] [--repeats 3]

- scaling: PPO CartPole, 8 envs per rank, default hyperparameters: steps/s (the
  run's own ``summary.sps``) of 2 ranks vs 1 rank with the same work per rank
  (budget x2), runs alternating, median of ``--repeats``.
- learning: PPO CartPole with 2 ranks and the 1-rank budget (50,000 steps in all),
  seeds 0 1 2, 20 deterministic evaluation episodes (bench_learning's protocol).
- ceiling: the same 1-rank run alone, then two of them at once as independent
  processes (no communication at all): the most 2 ranks can gain on this machine.
- collective: what one gradient all-reduce of PPO's CartPole network costs here
  (gloo, 2 ranks), and the all-gather of a row, median over 500 calls: the time
  2 ranks add per optimiser step and per row, whatever the training does.
- rows: the cost of one logged row (a 10-value training row and 40 finished
  episodes into json + tensorboard): 1 rank logs them; 2 ranks exchange them in
  one all-gather and rank 0 logs them. Median over 200 rows.

Each run is a real ``python -m rl_training`` (1 rank) or
``python -m torch.distributed.run --standalone --nproc_per_node=2 -m rl_training``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}


def _run(ranks: int, args: list[str], out: Path) -> Path:
    """One training run; returns its run directory."""
    launcher = [*TORCHRUN, f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
    cmd = [*launcher, "-m", "rl_training", *args, "--output-dir", str(out), "--quiet",
           "--device", "cpu", "--log-sinks", "json,tensorboard"]  # fmt: skip
    before = set(out.iterdir()) if out.exists() else set()
    done = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nexit {done.returncode}:\n{done.stderr[-4000:]}")
    (run_dir,) = set(out.iterdir()) - before
    return run_dir


def scaling(repeats: int, per_rank: int, hp: list[str]) -> None:
    extra = [arg for pair in hp for arg in ("--hp", pair)]
    print(f"scaling: PPO CartPole-v1, 8 envs per rank, {per_rank:,} steps per rank "
          f"{' '.join(hp)}")  # fmt: skip
    sps: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(repeats):
            for ranks in (1, 2):
                run_dir = _run(ranks, ["--algo", "ppo", "--env-id", "CartPole-v1",
                                       "--total-timesteps", str(per_rank * ranks),
                                       "--hp", "num_envs=8", *extra], Path(root))  # fmt: skip
                summary = json.loads((run_dir / "run.json").read_text())["summary"]
                sps[ranks].append(summary["sps"])
                print(f"  repeat {repeat}: {ranks} rank(s) {summary['sps']:,.0f} steps/s")
    one, two = statistics.median(sps[1]), statistics.median(sps[2])
    print(f"  median: 1 rank {one:,.0f} steps/s, 2 ranks {two:,.0f} steps/s: "
          f"{two / one:.2f}x (target >= 1.6x)")  # fmt: skip


def ceiling(repeats: int, per_rank: int, hp: list[str]) -> None:
    extra = [arg for pair in hp for arg in ("--hp", pair)]
    args = ["--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps", str(per_rank),
            "--hp", "num_envs=8", *extra]  # fmt: skip
    print(f"ceiling: PPO CartPole-v1, 8 envs, {per_rank:,} steps {' '.join(hp)}: one run alone "
          "vs two independent runs at once")  # fmt: skip
    alone, together = [], []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(repeats):
            run_dir = _run(1, args, Path(root) / f"alone{repeat}")
            alone.append(json.loads((run_dir / "run.json").read_text())["summary"]["sps"])
            with ThreadPoolExecutor(2) as pool:
                outs = [Path(root) / f"pair{repeat}-{i}" for i in range(2)]
                dirs = list(pool.map(lambda out: _run(1, args, out), outs))
            pair = sum(json.loads((d / "run.json").read_text())["summary"]["sps"] for d in dirs)
            together.append(pair)
            print(f"  repeat {repeat}: alone {alone[-1]:,.0f} steps/s, two at once "
                  f"{pair:,.0f} steps/s together")  # fmt: skip
    one, two = statistics.median(alone), statistics.median(together)
    print(f"  median: {two / one:.2f}x for two processes with no communication at all")


def learning(seeds: list[int], budget: int, hp: list[str]) -> None:
    from rl_training import evaluate

    extra = [arg for pair in hp for arg in ("--hp", pair)]
    print(f"learning: PPO CartPole-v1, 2 ranks, {budget:,} steps in all (the 1-rank budget) "
          f"{' '.join(hp)}")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as root:
        for seed in seeds:
            run_dir = _run(2, ["--algo", "ppo", "--env-id", "CartPole-v1", "--seed", str(seed),
                               "--total-timesteps", str(budget), *extra],
                           Path(root))  # fmt: skip
            result = evaluate(run_dir, n_episodes=20, deterministic=True, seed=1000)
            results.append(result.mean_return)
            print(f"  seed {seed}: {result.mean_return:.1f}")
    print(f"  median {statistics.median(results):.1f}, worst {min(results):.1f} "
          "(target >= 475 on every seed)")  # fmt: skip


ROWS_SCRIPT = textwrap.dedent(
    """
    import json, os, statistics, sys, time
    from pathlib import Path

    import numpy as np
    import torch
    import torch.distributed as dist

    from rl_training import TrainConfig, create_training_run
    from rl_training.runtime.distributed import Replicas, launch_world
    from rl_training.trainers.envs import EpisodeTracker

    world = launch_world()
    if world.distributed:
        dist.init_process_group("gloo")
    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=10**9,
                         output_dir=sys.argv[1], device="cpu",
                         log_sinks=["json", "tensorboard"])
    rows, per_row = 200, 40
    times = []
    with create_training_run(config) as run:
        tracker = EpisodeTracker(1, run.logger)
        replicas = Replicas(world, torch.device("cpu")) if world.distributed else None
        values = {f"loss/{i}": torch.tensor(0.1 * i + world.rank) for i in range(10)}
        for row in range(rows):
            step = (row + 1) * 4096
            episodes = np.array([[step - 4096 + 100 * (i + 1), 20.0 + i, 20] for i in
                                 range(per_row // world.size)], dtype=np.float64)
            start = time.perf_counter()
            if replicas is not None:
                merged, everyone = replicas.gather_row(values, episodes, 4096)
            else:
                merged, everyone = dict(values), episodes
            for s, r, n in everyone.tolist():
                tracker.record(int(s), r, int(n))
            run.logger.log_metrics(merged, step)
            times.append(time.perf_counter() - start)
    if world.is_writer:
        print(json.dumps(statistics.median(times)))
    if world.distributed:
        dist.destroy_process_group()
    """
)


COLLECTIVE_SCRIPT = textwrap.dedent(
    """
    import statistics, time
    import gymnasium as gym
    import torch
    import torch.distributed as dist
    from rl_training.trainers.networks import ActorCritic

    dist.init_process_group("gloo")
    env = gym.make("CartPole-v1")
    agent = ActorCritic(env.observation_space, env.action_space, [64, 64])
    n = sum(p.numel() for p in agent.parameters()) + 1  # the flat gradient + the stop flag
    grad = torch.zeros(n)
    row = torch.zeros(20 + 3 * 16384)  # a row and room for 16,384 episodes (PPO's default)
    parts = [torch.empty_like(row) for _ in range(2)]

    def timed_us(call, calls=500):
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6, statistics.mean(times) * 1e6

    dist.barrier()
    reduce_us, reduce_mean_us = timed_us(lambda: dist.all_reduce(grad))
    gather_us, _ = timed_us(lambda: dist.all_gather(parts, row), 100)
    if dist.get_rank() == 0:
        print(f"{n} {reduce_us} {reduce_mean_us} {gather_us}")
    dist.destroy_process_group()
    """
)


def collective() -> None:
    with tempfile.TemporaryDirectory() as root:
        script = Path(root) / "collective.py"
        script.write_text(COLLECTIVE_SCRIPT)
        done = subprocess.run([*TORCHRUN, "--nproc_per_node=2", str(script)], check=True,
                              env=_clean_env(), capture_output=True, text=True,
                              timeout=600)  # fmt: skip
    from rl_training.hyperparams import PPOHyperparams

    n, reduce_us, reduce_mean_us, gather_us = done.stdout.split()
    hp = PPOHyperparams()
    rollout = hp.n_steps * 8
    steps = rollout // hp.batch_size * hp.n_epochs
    print(f"collective: all-reduce of the {int(n):,}-element PPO gradient: "
          f"median {float(reduce_us):,.0f} us, mean {float(reduce_mean_us):,.0f} us (500 calls);"
          f" a row's all-gather (16,384 episodes): {float(gather_us):,.0f} us")  # fmt: skip
    print(f"  PPO's defaults with 8 envs take {steps} optimiser steps per {rollout:,}-step "
          f"rollout per rank: {steps * float(reduce_mean_us) / 1e3:.0f} ms of all-reduce "
          "per rollout (at the mean)")  # fmt: skip


def rows() -> None:
    print("rows: one training row (10 values) + 40 episodes into json + tensorboard")
    with tempfile.TemporaryDirectory() as root:
        script = Path(root) / "rows.py"
        script.write_text(ROWS_SCRIPT)
        cost = {}
        for ranks in (1, 2):
            launcher = [*TORCHRUN, f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
            done = subprocess.run([*launcher, str(script), str(Path(root) / f"r{ranks}")],
                                  check=True, env=_clean_env(), capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
            cost[ranks] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {ranks} rank(s): {cost[ranks] * 1e6:,.0f} us a row (median of 200)")
    print(f"  2 ranks / 1 rank: {cost[2] / cost[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ["scaling", "ceiling", "learning", "collective", "rows"]
    parser.add_argument("parts", nargs="*", default=parts, choices=parts)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-rank", type=int, default=65_536)
    parser.add_argument("--scaling-hp", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra PPO hyperparameters for the scaling runs")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--learning-hp", nargs="*", default=[], metavar="KEY=VALUE",
                        help="PPO hyperparameters for the learning runs")  # fmt: skip
    parser.add_argument("--budget", type=int, default=50_000)
    args = parser.parse_args()
    if "scaling" in args.parts:
        scaling(args.repeats, args.per_rank, args.scaling_hp)
    if "ceiling" in args.parts:
        ceiling(args.repeats, args.per_rank, args.scaling_hp)
    if "learning" in args.parts:
        learning(args.seeds, args.budget, args.learning_hp)
    if "collective" in args.parts:
        collective()
    if "rows" in args.parts:
        rows()


if __name__ == "__main__":
    main()
