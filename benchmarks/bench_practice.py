"""What the practitioner features cost: evaluation during training, and the mlflow sink.

    python benchmarks/bench_practice.py eval     # PPO CartPole 50k, eval_every=10000 vs off
    python benchmarks/bench_practice.py mlflow   # per-row cost of the mlflow sink; training
                                                 # with json,tensorboard,mlflow vs json,tensorboard

Runs alternate (one setting, then the other) so that machine noise hits both alike;
medians of ``--repeats``. The mlflow part needs ``pip install ./plugins/rl-training-mlflow``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def train_seconds(root: Path, seed: int, **fields: object) -> float:
    """Wall time of one ``train`` end to end (setup, training, closing)."""
    from rl_training import TrainConfig, train

    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=seed, total_timesteps=50_000,
                         output_dir=root, device="cpu", **fields)  # type: ignore[arg-type]  # fmt: skip
    start = time.perf_counter()
    train(config)
    return time.perf_counter() - start


def bench_eval(repeats: int) -> None:
    off, on = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            off.append(train_seconds(Path(tmp) / f"off{i}", seed=i))
            on.append(train_seconds(Path(tmp) / f"on{i}", seed=i, eval_every=10_000,
                                    eval_episodes=10))  # fmt: skip
            print(f"  repeat {i}: off {off[-1]:.2f} s, eval_every=10000 {on[-1]:.2f} s", flush=True)
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"PPO CartPole 50k: off {m_off:.2f} s, with evaluation {m_on:.2f} s: "
          f"overhead {100 * (m_on / m_off - 1):.1f} % (target <= 10 %)")  # fmt: skip


def bench_mlflow(repeats: int) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from rl_training import create_run

    per_row = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            with create_run("bench", output_dir=Path(tmp) / "runs", log_sinks="mlflow") as run:
                start = time.perf_counter()
                for step in range(5_000):
                    run.logger.log_metrics({f"k{j}/x": float(step + j) for j in range(10)}, step)
                run.close()
                per_row.append((time.perf_counter() - start) / 5_000)
            print(f"  repeat {i}: {1e6 * per_row[-1]:.1f} us a row (10 scalars)", flush=True)
        median = statistics.median(per_row)
        print(f"mlflow sink, shared SQLite store: {1e6 * median:.1f} us a row of 10 scalars, "
              f"{1 / median:,.0f} rows/s (closing included)")  # fmt: skip
        plain, with_mlflow = [], []
        for i in range(repeats):
            plain.append(train_seconds(Path(tmp) / f"p{i}", seed=i))
            sinks = ("json", "tensorboard", "mlflow")
            with_mlflow.append(train_seconds(Path(tmp) / f"m{i}", seed=i, log_sinks=sinks))
            print(f"  repeat {i}: json,tensorboard {plain[-1]:.2f} s, +mlflow "
                  f"{with_mlflow[-1]:.2f} s", flush=True)  # fmt: skip
    ratio = statistics.median(plain) / statistics.median(with_mlflow)
    print(f"PPO CartPole 50k steps/s with json,tensorboard,mlflow vs json,tensorboard: "
          f"{ratio:.2f}x (target >= 0.9x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["eval", "mlflow"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    (bench_eval if args.what == "eval" else bench_mlflow)(args.repeats)


if __name__ == "__main__":
    main()
