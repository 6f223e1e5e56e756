"""Per-call cost of logging 10 scalars: CompositeLogger vs. the naive way (and SB3).

Each block is 1,000 calls on a fresh logger, timed through its ``close()`` so that
work left to a background writer thread is counted. Prints medians and ratios.

    python benchmarks/bench_logging.py [--blocks 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from rl_training import TrainConfig, create_training_run

CALLS = 1_000
KEYS = [f"group{i % 3}/metric_{i}" for i in range(10)]


def _config(root: Path) -> TrainConfig:
    return TrainConfig(algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=1, output_dir=root)


def bench_composite(root: Path, tensors: bool) -> float:
    run = create_training_run(_config(root))
    logger = run.logger
    if tensors:
        rows = [{k: torch.tensor(float(i + j)) for j, k in enumerate(KEYS)} for i in range(CALLS)]
    else:
        rows = [{k: float(i + j) for j, k in enumerate(KEYS)} for i in range(CALLS)]
    start = time.perf_counter()
    for step, row in enumerate(rows):
        logger.log_metrics(row, step)
    run.close()
    return (time.perf_counter() - start) / CALLS


def bench_naive(root: Path) -> float:
    run_dir = root / f"naive-{time.monotonic_ns()}"
    run_dir.mkdir()
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    f = open(run_dir / "metrics.jsonl", "w")  # noqa: SIM115
    rows = [{k: float(i + j) for j, k in enumerate(KEYS)} for i in range(CALLS)]
    start = time.perf_counter()
    for step, row in enumerate(rows):
        for key, value in row.items():
            writer.add_scalar(key, value, step)
        f.write(json.dumps({"step": step, "time": time.time(), **row}) + "\n")
        f.flush()
    writer.close()
    f.close()
    return (time.perf_counter() - start) / CALLS


def bench_sb3(root: Path) -> float | None:
    try:
        from stable_baselines3.common.logger import configure
    except ImportError:
        return None
    logger = configure(str(root / f"sb3-{time.monotonic_ns()}"), ["json", "csv", "tensorboard"])
    rows = [{k: float(i + j) for j, k in enumerate(KEYS)} for i in range(CALLS)]
    start = time.perf_counter()
    for step, row in enumerate(rows):
        for key, value in row.items():
            logger.record(key, value)
        logger.dump(step)
    logger.close()
    return (time.perf_counter() - start) / CALLS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=15)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for _ in range(args.blocks):  # interleaved, so machine noise hits all alike
            results["a"].append(bench_composite(root, tensors=False))
            results["b"].append(bench_naive(root))
            results["c"].append(bench_composite(root, tensors=True))
            sb3 = bench_sb3(root)
            if sb3 is not None:
                results["d"].append(sb3)
    med = {k: statistics.median(v) * 1e6 for k, v in results.items() if v}
    labels = {
        "a": "CompositeLogger json+tensorboard, floats",
        "b": "naive SummaryWriter.add_scalar x10 + json line",
        "c": "CompositeLogger json+tensorboard, 0-d tensors",
        "d": "SB3 logger json+csv+tensorboard",
    }
    print(f"per-call cost, 10 scalars, median of {args.blocks} blocks of {CALLS} calls")
    for key, label in labels.items():
        if key in med:
            spread = min(results[key]) * 1e6, max(results[key]) * 1e6
            print(f"({key}) {label:<48} {med[key]:8.1f} us  [{spread[0]:.1f}-{spread[1]:.1f}]")
        else:
            print(f"({key}) {label:<48}   (not installed)")
    print(f"a/b = {med['a'] / med['b']:.3f}   (target <= 0.15)")
    print(f"c/b = {med['c'] / med['b']:.3f}   (target <= 0.2)")
    if "d" in med:
        print(f"a/d = {med['a'] / med['d']:.3f}   d/b = {med['d'] / med['b']:.3f}")


if __name__ == "__main__":
    main()
