"""Speed of this checkout against another one (before/after a change), run by run.

Each pair runs the same training (bench_speed's cases: json + tensorboard logging,
the same seed) from the other checkout's ``src`` and from this one, back to back, in
fresh processes, so machine noise hits both alike. Prints each pair's steps/s and
ratio (this / other) and the median ratio per algorithm: the direct check that a
refactor kept the speed. Learning is checked by ``rows_fingerprint.py`` (bit-identical
rows and weights), not here.

    python benchmarks/bench_ab.py OTHER_SRC [ppo a2c dqn sac td3] [--repeats 3]

``OTHER_SRC`` is the other checkout's ``src`` (``git worktree add /tmp/before REV``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONE_RUN = """
import sys, tempfile, time
sys.path.insert(0, {bench!r})
from bench_speed import STEPS, config
import rl_training
from rl_training import train
assert rl_training.__file__.startswith({src!r}), rl_training.__file__
with tempfile.TemporaryDirectory() as root:
    start = time.perf_counter()
    result = train(config({algo!r}, STEPS[{algo!r}], __import__("pathlib").Path(root), seed=0))
    print(result.steps / (time.perf_counter() - start))
"""


def steps_per_second(src: Path, algo: str) -> float:
    """One run of ``algo`` with ``rl_training`` imported from ``src``, in a fresh process."""
    code = ONE_RUN.format(bench=str(HERE), algo=algo, src=str(src.resolve()))
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True, timeout=1800)  # fmt: skip
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout's src directory")
    parser.add_argument("algos", nargs="*", default=["ppo", "a2c", "dqn", "sac", "td3"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    this = HERE.parent / "src"
    print(f"this: {this}\nother: {args.other.resolve()}")
    medians = []
    for algo in args.algos:
        ratios = []
        for i in range(args.repeats):
            other = steps_per_second(args.other, algo)
            ours = steps_per_second(this, algo)
            ratios.append(ours / other)
            print(f"  {algo} pair {i}: other {other:7.0f} steps/s   this {ours:7.0f} steps/s"
                  f"   this/other {ratios[-1]:.3f}", flush=True)  # fmt: skip
        medians.append(f"{algo}: median this/other {statistics.median(ratios):.3f} "
                       f"({', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
        print(medians[-1], flush=True)
    print("\n" + "\n".join(medians))


if __name__ == "__main__":
    main()
