"""What durability costs: checkpoint size and write time, time from ``--resume`` to the
first new row, and learning across an interruption.

    python benchmarks/bench_resume.py cost      # PPO CartPole; SAC Pendulum, 100k in a 1M buffer
    python benchmarks/bench_resume.py learning  # PPO CartPole 50k, SIGTERM at ~25k, resumed

Times are medians of ``--repeats`` runs; this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RL_TRAIN = [sys.executable, "-m", "rl_training"]


def first_row_after(metrics: Path, step: int, proc: subprocess.Popen, start: float) -> float:
    """Seconds from ``start`` until ``metrics`` holds a row past ``step``."""
    while True:
        if metrics.exists():
            with open(metrics, "rb") as f:
                for line in f:
                    if line.endswith(b"\n") and json.loads(line)["step"] > step:
                        return time.perf_counter() - start
        if proc.poll() is not None:
            raise RuntimeError(f"rl-train ended ({proc.returncode}) before a new row")
        time.sleep(0.005)


def make_run(root: Path, algo: str, env_id: str, steps: int, *hp: str) -> Path:
    """A finished run with a final checkpoint, made by rl-train."""
    subprocess.run(
        [*RL_TRAIN, "--algo", algo, "--env-id", env_id, "--total-timesteps", str(steps),
         "--output-dir", str(root), "--quiet", "--checkpoint-every", "0", *hp],
        check=True, capture_output=True,
    )  # fmt: skip
    (run_dir,) = root.iterdir()
    return run_dir


def cost(repeats: int) -> None:
    from rl_training.config import TrainConfig
    from rl_training.trainers.checkpoint import load_checkpoint, save_checkpoint

    cases = {
        "PPO CartPole-v1 (defaults, 50k steps)": ("ppo", "CartPole-v1", 50_000, ()),
        # learning_starts past the budget: the buffer fills with random steps, quickly
        "SAC Pendulum-v1 (1M buffer, 100k filled)": (
            "sac", "Pendulum-v1", 100_000, ("--hp", "learning_starts=1000000"),
        ),
    }  # fmt: skip
    for name, (algo, env_id, steps, hp) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = make_run(Path(tmp) / "runs", algo, env_id, steps, *hp)
            checkpoint = run_dir / "checkpoint.pt"
            size = checkpoint.stat().st_size
            loaded = load_checkpoint(checkpoint)
            config = TrainConfig(**loaded.config, output_dir=tmp)
            writes, loads = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                save_checkpoint(Path(tmp) / "again.pt", config=config, step=loaded.step,
                                state=loaded.trainer)  # fmt: skip
                writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                load_checkpoint(Path(tmp) / "again.pt")
                loads.append(time.perf_counter() - start)
            to_row = []
            for i in range(repeats):
                budget = steps + 2_000 * (i + 1)
                start = time.perf_counter()
                proc = subprocess.Popen(
                    [*RL_TRAIN, "--resume", str(run_dir), "--total-timesteps", str(budget),
                     "--quiet"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                to_row.append(first_row_after(run_dir / "metrics.jsonl", steps + 2_000 * i,
                                              proc, start))  # fmt: skip
                proc.wait()
            fresh = []
            for _ in range(repeats):
                out = Path(tmp) / f"fresh{len(fresh)}"
                start = time.perf_counter()
                proc = subprocess.Popen(
                    [*RL_TRAIN, "--algo", algo, "--env-id", env_id, "--total-timesteps", "2000",
                     "--output-dir", str(out), "--quiet", *hp],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                while not list(out.glob("*/metrics.jsonl")):
                    time.sleep(0.005)
                fresh.append(first_row_after(next(out.glob("*/metrics.jsonl")), -1, proc, start))
                proc.wait()
        write_ms, load_ms = 1e3 * statistics.median(writes), 1e3 * statistics.median(loads)
        resumed, started = statistics.median(to_row), statistics.median(fresh)
        print(
            f"{name}: checkpoint.pt {size / 1e6:.2f} MB | write {write_ms:.1f} ms | load "
            f"{load_ms:.1f} ms | rl-train --resume to first new row {resumed:.2f} s (a fresh "
            f"rl-train to its first row: {started:.2f} s, ratio {resumed / started:.2f})",
            flush=True,
        )


def learning(seeds: list[int]) -> None:
    from rl_training.trainers import evaluate

    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "runs"
            proc = subprocess.Popen(
                [*RL_TRAIN, "--algo", "ppo", "--env-id", "CartPole-v1", "--total-timesteps",
                 "50000", "--seed", str(seed), "--output-dir", str(root), "--quiet",
                 "--device", "cpu"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            while not list(root.glob("*/metrics.jsonl")):
                time.sleep(0.01)
            metrics = next(root.glob("*/metrics.jsonl"))
            while True:  # the first training row at or past 25k steps
                rows = [json.loads(x) for x in metrics.read_text().splitlines()]
                if any("loss/policy" in r and r["step"] >= 25_000 for r in rows):
                    break
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            run_dir = metrics.parent
            stopped = json.loads((run_dir / "run.json").read_text())["status"]
            done = subprocess.run([*RL_TRAIN, "--resume", str(run_dir), "--quiet"],
                                  capture_output=True, text=True)  # fmt: skip
            info = json.loads((run_dir / "run.json").read_text())
            score = evaluate(run_dir, n_episodes=20, deterministic=True, seed=1000).mean_return
            print(f"  seed {seed}: stopped {stopped} (exit {proc.returncode}) at step "
                  f"{info['resumes'][0]['step']}, resumed -> {info['status']} (exit "
                  f"{done.returncode}); eval {score:.1f} (target >= 475)", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cost", "learning"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.what == "cost":
        cost(args.repeats)
    else:
        learning(args.seeds)


if __name__ == "__main__":
    main()
