"""Training speed side by side with Stable-Baselines3, identical hyperparameters.

Runs alternate (ours, SB3, ours, SB3, ...) so that machine noise hits both alike;
each run is timed end to end (setup, training with json + tensorboard logging on,
closing). Prints median steps/s and the ratio ours / SB3 for each algorithm, and the
median of the per-pair ratios (each pair shares the machine's state of the moment:
on a noisy machine the steadier figure).

For the off-policy algorithms it also prints the matrix work of one training
iteration (counted by ``torch.utils.flop_counter``), the GFLOP/s that work achieves
in our runs, and the machine's sgemm rate at the same sizes measured in the same
process: how far a run is from the floor the matrix work sets.

SB3 is only imported here, never a dependency: ``pip install stable-baselines3``.

    python benchmarks/bench_speed.py [ppo a2c dqn sac td3] [--steps N] [--repeats 3]
        [--device cpu|cuda]

``--device cuda`` puts both sides on the GPU (``benchmarks/gpu_check.sh``); the matrix
work and sgemm figures are then left out (they describe the CPU).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from rl_training import TrainConfig
from rl_training.experiment.logging import CompositeLogger
from rl_training.runtime.plan import resolve_plan
from rl_training.trainers import train
from rl_training.trainers.session import Session, trainer_class

# SB3's own defaults, spelled out for our side (SB3 takes them implicitly); A2C with
# 8 envs on both sides (rl-zoo's CartPole setting), DQN with rl-zoo's hyperparameters.
CASES: dict[str, dict[str, Any]] = {
    "ppo": {
        "env_id": "CartPole-v1",
        "ours": {
            "num_envs": 1,
            "n_steps": 2048,
            "batch_size": 64,
            "n_epochs": 10,
            "learning_rate": 3e-4,
            "anneal_lr": False,
            "gamma": 0.99,
            "gae_lambda": 0.95,
            "clip_range": 0.2,
            "ent_coef": 0.0,
            "vf_coef": 0.5,
            "max_grad_norm": 0.5,
            "net_arch": [64, 64],
        },
    },
    "a2c": {
        "env_id": "CartPole-v1",
        "ours": {
            "num_envs": 8,
            "n_steps": 5,
            "learning_rate": 7e-4,
            "gamma": 0.99,
            "gae_lambda": 1.0,
            "ent_coef": 0.0,
            "vf_coef": 0.5,
            "max_grad_norm": 0.5,
            "net_arch": [64, 64],
        },
    },
    "sac": {
        "env_id": "Pendulum-v1",
        "ours": {
            "num_envs": 1,
            "learning_rate": 3e-4,
            "buffer_size": 1_000_000,
            "learning_starts": 100,
            "batch_size": 256,
            "tau": 0.005,
            "gamma": 0.99,
            "train_freq": 1,
            "gradient_steps": 1,
            "ent_coef": "auto",
            "net_arch": [256, 256],
        },
    },
    "td3": {
        "env_id": "Pendulum-v1",
        "ours": {
            "num_envs": 1,
            "learning_rate": 1e-3,
            "buffer_size": 1_000_000,
            "learning_starts": 100,
            "batch_size": 256,
            "tau": 0.005,
            "gamma": 0.99,
            "train_freq": 1,
            "gradient_steps": 1,
            "policy_delay": 2,
            "target_policy_noise": 0.2,
            "target_noise_clip": 0.5,
            "action_noise": 0.0,
            "net_arch": [400, 300],
        },
    },
    "dqn": {  # rl-zoo's CartPole hyperparameters (our defaults), on both sides
        "env_id": "CartPole-v1",
        "ours": {
            "num_envs": 1,
            "learning_rate": 2.3e-3,
            "buffer_size": 100_000,
            "learning_starts": 1_000,
            "batch_size": 64,
            "tau": 1.0,
            "gamma": 0.99,
            "train_freq": 256,
            "gradient_steps": 128,
            "target_update_interval": 10,
            "exploration_fraction": 0.16,
            "exploration_initial_eps": 1.0,
            "exploration_final_eps": 0.04,
            "max_grad_norm": 10.0,
            "net_arch": [256, 256],
        },
    },
}


STEPS = {"ppo": 20_480, "a2c": 40_000, "dqn": 20_000, "sac": 5_000, "td3": 5_000}
"""Default budget per run: a run of ours lasts ~5-40 s here."""


DEVICE = "cpu"
"""Where both sides train (``--device``)."""


def config(algo: str, steps: int, root: Path, seed: int) -> TrainConfig:
    case = CASES[algo]
    return TrainConfig(
        algo=algo,
        env_id=case["env_id"],
        seed=seed,
        total_timesteps=steps,
        output_dir=root,
        device=DEVICE,
        log_sinks=("json", "tensorboard"),
        hyperparams=case["ours"],
    )


def run_ours(algo: str, steps: int, root: Path, seed: int) -> float:
    start = time.perf_counter()
    result = train(config(algo, steps, root, seed))
    return result.steps / (time.perf_counter() - start)


def run_sb3(algo: str, steps: int, root: Path, seed: int) -> float:
    import stable_baselines3
    from stable_baselines3.common.env_util import make_vec_env

    cls = getattr(stable_baselines3, algo.upper())
    case = CASES[algo]
    sb3_kwargs: dict[str, Any] = {}
    if algo == "dqn":  # rl-zoo's, as ours; SB3's own defaults for the others
        hp = case["ours"]
        sb3_kwargs = {k: hp[k] for k in hp if k not in ("num_envs", "net_arch")}
        sb3_kwargs["policy_kwargs"] = {"net_arch": hp["net_arch"]}
    start = time.perf_counter()
    env = make_vec_env(case["env_id"], n_envs=case["ours"]["num_envs"], seed=seed)
    model = cls(
        "MlpPolicy",
        env,
        seed=seed,
        device=DEVICE,
        tensorboard_log=str(root / "sb3"),
        verbose=0,
        **sb3_kwargs,
    )
    model.learn(total_timesteps=steps)
    elapsed = time.perf_counter() - start
    return model.num_timesteps / elapsed


def iteration_flops(algo: str, root: Path) -> float:
    """Matrix FLOPs of one training iteration of ours (forward and backward), counted
    by ``torch.utils.flop_counter`` on a real trainer once it trains every step."""
    plan = resolve_plan(config(algo, 10**9, root, seed=0))
    session = Session.open(plan, CompositeLogger({}))
    trainer = trainer_class(plan.spec)(session)
    warmup = max(plan.hp.learning_starts, getattr(plan.hp, "train_freq", 1)) + 10
    while session.steps < warmup:
        trainer.iteration()
    iterations = 2 * getattr(plan.hp, "train_freq", 1) * getattr(plan.hp, "policy_delay", 1)
    with FlopCounterMode(display=False) as counter:
        for _ in range(iterations):
            trainer.iteration()
    session.close()
    return counter.get_total_flops() / iterations


def sgemm_rate(m: int, k: int, n: int) -> float:
    """The best GFLOP/s of an ``(m, k) @ (k, n)`` float32 matmul on this machine."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    calls = max(20, int(2e9 / (2 * m * k * n)))
    best = math.inf
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * m * k * n / best / 1e9


def bench(algo: str, steps: int, repeats: int, root: Path) -> tuple[float, float, float]:
    """Median steps/s of ours and SB3, and the median of the per-pair ratios (each pair
    ran back to back, so it shares the machine's state of the moment)."""
    ours: list[float] = []
    sb3: list[float] = []
    for i in range(repeats):
        ours.append(run_ours(algo, steps, root, seed=i))
        sb3.append(run_sb3(algo, steps, root, seed=i))
        print(
            f"  {algo} repeat {i}: ours {ours[-1]:7.0f} steps/s   SB3 {sb3[-1]:7.0f} steps/s"
            f"   ratio {ours[-1] / sb3[-1]:.2f}",
            flush=True,
        )
    pairs = statistics.median(o / s for o, s in zip(ours, sb3, strict=True))
    return statistics.median(ours), statistics.median(sb3), pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algos", nargs="*", help=f"of {', '.join(CASES)} (default: all)")
    parser.add_argument("--steps", type=int, help="budget per run (default: per algorithm)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    on_cpu = DEVICE == "cpu"
    if not on_cpu:
        print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})")
    args.algos = args.algos or list(CASES)
    if unknown := [a for a in args.algos if a not in CASES]:
        parser.error(f"unknown algorithm {unknown[0]!r}: choose from {', '.join(CASES)}")
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        sys.exit("bench_speed needs stable-baselines3: pip install stable-baselines3")
    if on_cpu:
        rates = {size: sgemm_rate(256, size, size) for size in (64, 256, 400)}
        print(
            f"sgemm reference ({torch.get_num_threads()} threads, batch 256): "
            + ", ".join(f"{size}x{size} {rate:.0f} GFLOP/s" for size, rate in rates.items())
        )
    results: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos:
            steps = args.steps or STEPS[algo]
            m_ours, m_sb3, pairs = bench(algo, steps, args.repeats, Path(tmp))
            line = (
                f"{algo:4s} {CASES[algo]['env_id']:12s} {steps:6d} steps: ours {m_ours:7.0f} "
                f"steps/s   SB3 {m_sb3:7.0f} steps/s   ours/SB3 {m_ours / m_sb3:.2f}x "
                f"(median of pairs {pairs:.2f}x)"
            )
            if on_cpu and algo in ("dqn", "sac", "td3"):
                flops = iteration_flops(algo, Path(tmp))
                line += (
                    f"   matrix work {flops / 1e6:.0f} MFLOP/step, "
                    f"{flops * m_ours / 1e9:.0f} GFLOP/s in the run"
                )
            results.append(line)
            print(line, flush=True)
    print(f"\nmedians of {args.repeats} runs on {DEVICE}, logging on (json + tensorboard)")
    for line in results:
        print(line)
    if not on_cpu:
        return
    rates_after = {size: sgemm_rate(256, size, size) for size in (64, 256, 400)}
    print(
        "sgemm reference after: "
        + ", ".join(f"{size}x{size} {rate:.0f} GFLOP/s" for size, rate in rates_after.items())
    )


if __name__ == "__main__":
    main()
