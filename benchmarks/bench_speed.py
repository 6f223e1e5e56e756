"""Training speed side by side with Stable-Baselines3, identical hyperparameters.

Runs alternate (ours, SB3, ours, SB3, ...) so that machine noise hits both alike;
each run is timed end to end (setup, training with logging on, closing). Prints
median steps/s and the ratio ours / SB3. SB3 is only imported here, never a
dependency: ``pip install stable-baselines3`` first.

    python benchmarks/bench_speed.py ppo [--steps 20480] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rl_training import TrainConfig
from rl_training.trainers import train

# SB3's own defaults, spelled out for our side (SB3 takes them implicitly).
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
            "num_envs": 1,
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
    "dqn": {
        "env_id": "CartPole-v1",
        "ours": {
            "num_envs": 1,
            "learning_rate": 1e-4,
            "buffer_size": 1_000_000,
            "learning_starts": 100,
            "batch_size": 32,
            "tau": 1.0,
            "gamma": 0.99,
            "train_freq": 4,
            "gradient_steps": 1,
            "target_update_interval": 10_000,
            "exploration_fraction": 0.1,
            "exploration_initial_eps": 1.0,
            "exploration_final_eps": 0.05,
            "max_grad_norm": 10.0,
            "net_arch": [64, 64],
        },
    },
}


def run_ours(algo: str, steps: int, root: Path, seed: int) -> float:
    case = CASES[algo]
    config = TrainConfig(
        algo=algo,
        env_id=case["env_id"],
        seed=seed,
        total_timesteps=steps,
        output_dir=root,
        device="cpu",
        log_sinks=("json", "tensorboard"),
        hyperparams=case["ours"],
    )
    start = time.perf_counter()
    result = train(config)
    return result.steps / (time.perf_counter() - start)


def run_sb3(algo: str, steps: int, root: Path, seed: int) -> float:
    import stable_baselines3

    cls = getattr(stable_baselines3, algo.upper())
    start = time.perf_counter()
    model = cls(
        "MlpPolicy",
        CASES[algo]["env_id"],
        seed=seed,
        device="cpu",
        tensorboard_log=str(root / "sb3"),
        verbose=0,
    )
    model.learn(total_timesteps=steps)
    elapsed = time.perf_counter() - start
    return model.num_timesteps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo", choices=sorted(CASES))
    parser.add_argument("--steps", type=int, default=20_480)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        sys.exit("bench_speed needs stable-baselines3: pip install stable-baselines3")
    ours: list[float] = []
    sb3: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            ours.append(run_ours(args.algo, args.steps, Path(tmp), seed=i))
            sb3.append(run_sb3(args.algo, args.steps, Path(tmp), seed=i))
            print(
                f"  repeat {i}: ours {ours[-1]:7.0f} steps/s   SB3 {sb3[-1]:7.0f} steps/s",
                flush=True,
            )
    m_ours, m_sb3 = statistics.median(ours), statistics.median(sb3)
    print(
        f"{args.algo} {CASES[args.algo]['env_id']}, {args.steps} steps, SB3 defaults, "
        f"logging on, median of {args.repeats}"
    )
    print(
        f"ours {m_ours:.0f} steps/s   SB3 {m_sb3:.0f} steps/s   "
        f"ratio ours/SB3 = {m_ours / m_sb3:.2f}"
    )


if __name__ == "__main__":
    main()
