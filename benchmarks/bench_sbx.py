"""Steady-state training speed against sbx (SB3 in JAX) and SB3, identical hyperparameters.

Steady state is ``N / (T(2N) - T(N))``: each library trains N and then 2N steps, each in
a fresh process, timed from the constructor to the end of ``learn`` (ours: ``train``);
the difference cancels imports, setup and JAX's JIT compilation. The whole-run rate
``2N / T(2N)`` is printed too. Runs alternate (ours, sbx, SB3 for one seed, then the
next seed), so machine noise hits all alike; medians over seeds.

The cases are issue 26's: PPO CartPole (SB3's defaults; sbx with ``ortho_init=True``,
as SB3 and ours), SAC Pendulum (SB3's defaults), TD3 Pendulum ([400, 300], lr 1e-3),
DQN CartPole (rl-zoo's; sbx has no gradient clipping). Logging: ours JSON lines +
TensorBoard, SB3 and sbx their TensorBoard logger.

sbx lives in its own virtual environment (it pulls JAX and its own SB3), made on first
use: ``python -m venv VENV && VENV/bin/pip install "torch==2.13.0" sbx-rl tensorboard``
(``--sbx-venv``, default ``/tmp/sbx-venv``). SB3 is imported from this environment.

    python benchmarks/bench_sbx.py [ppo sac td3 dqn] [--seeds 0 1 2]
        [--libs ours ours-bf16 sbx sb3]
        [--scale 1.0] [--out bench_sbx.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# N per algorithm: ~5-40 s for ours at N here.
STEPS = {"ppo": 20_480, "sac": 3_000, "td3": 3_000, "dqn": 20_000}
ENV = {"ppo": "CartPole-v1", "sac": "Pendulum-v1", "td3": "Pendulum-v1", "dqn": "CartPole-v1"}
# The hyperparameters, SB3's spelling (ours: benchmarks/bench_speed.py's CASES, the same).
SB3_KWARGS: dict[str, dict[str, Any]] = {
    "ppo": {},
    "sac": {},
    "td3": {"learning_rate": 1e-3, "policy_kwargs": {"net_arch": [400, 300]}},
    "dqn": {
        "learning_rate": 2.3e-3, "buffer_size": 100_000, "learning_starts": 1_000,
        "batch_size": 64, "tau": 1.0, "gamma": 0.99, "train_freq": 256,
        "gradient_steps": 128, "target_update_interval": 10, "exploration_fraction": 0.16,
        "exploration_initial_eps": 1.0, "exploration_final_eps": 0.04,
        "max_grad_norm": 10.0, "policy_kwargs": {"net_arch": [256, 256]},
    },
}  # fmt: skip
SBX_CHANGES: dict[str, dict[str, Any]] = {
    "ppo": {"policy_kwargs": {"ortho_init": True}},
    "dqn": {"max_grad_norm": None},  # None: left out (sbx has no such argument)
}
LIBS = ("ours", "ours-bf16", "sbx", "sb3")
"""``ours-bf16``: ours with ``precision="bf16"`` (DQN, SAC, TD3; opt-in, not the default)."""
OURS = ("ours", "ours-bf16")
BF16_ALGOS = ("sac", "td3", "dqn")
"""The trainers with a ``precision`` hyperparameter (``ours-bf16`` skips the others)."""


def worker(lib: str, algo: str, steps: int, seed: int, logdir: str) -> float:
    """Train once in this process; the seconds from setup to the end of training."""
    if lib in OURS:
        sys.path.insert(0, str(Path(__file__).parent))
        import dataclasses

        from bench_speed import CASES, config

        from rl_training.trainers import train

        assert CASES[algo]["env_id"] == ENV[algo]
        start = time.perf_counter()
        run = config(algo, steps, Path(logdir), seed)
        if lib == "ours-bf16":
            hp = {**run.hyperparams, "precision": "bf16"}
            run = dataclasses.replace(run, hyperparams=hp)
        train(run)
        return time.perf_counter() - start
    module = __import__("sbx" if lib == "sbx" else "stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    kwargs = dict(SB3_KWARGS[algo])
    if lib == "sbx":
        for key, value in SBX_CHANGES.get(algo, {}).items():
            if value is None:
                kwargs.pop(key, None)
            else:
                kwargs[key] = value
    start = time.perf_counter()
    env = make_vec_env(ENV[algo], n_envs=1, seed=seed)
    model = getattr(module, algo.upper())(
        "MlpPolicy", env, seed=seed, device="cpu", tensorboard_log=logdir, verbose=0, **kwargs
    )
    model.learn(total_timesteps=steps)
    return time.perf_counter() - start


def sbx_python(venv: Path) -> Path:
    """The sbx environment's python, made on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making the sbx environment in {venv} (pip install sbx-rl)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0", "sbx-rl", "tensorboard"], check=True)
    return python


def timed(python: Path | str, lib: str, algo: str, steps: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as logdir:
        out = subprocess.run(
            [str(python), __file__, "--worker", lib, algo, str(steps), str(seed), logdir],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{lib} {algo} {steps} steps failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        lib, algo, steps, seed, logdir = sys.argv[2:7]
        print(worker(lib, algo, int(steps), int(seed), logdir))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algos", nargs="*", help=f"of {', '.join(STEPS)} (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--libs", nargs="+", default=["ours", "sbx", "sb3"], choices=LIBS)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every N")
    parser.add_argument("--sbx-venv", type=Path, default=Path("/tmp/sbx-venv"))
    parser.add_argument("--out", type=Path, default=Path("bench_sbx.jsonl"))
    args = parser.parse_args()
    args.algos = args.algos or list(STEPS)
    if unknown := [a for a in args.algos if a not in STEPS]:
        parser.error(f"unknown algorithm {unknown[0]!r}: choose from {', '.join(STEPS)}")
    pythons = {"ours": sys.executable, "ours-bf16": sys.executable, "sb3": sys.executable}
    if "sbx" in args.libs:
        pythons["sbx"] = str(sbx_python(args.sbx_venv))
    table: list[str] = []
    for algo in args.algos:
        n = max(1, round(STEPS[algo] * args.scale))
        libs = [lib for lib in args.libs if lib != "ours-bf16" or algo in BF16_ALGOS]
        steady: dict[str, list[float]] = {lib: [] for lib in libs}
        whole: dict[str, list[float]] = {lib: [] for lib in libs}
        for seed in args.seeds:
            for lib in libs:
                t1 = timed(pythons[lib], lib, algo, n, seed)
                t2 = timed(pythons[lib], lib, algo, 2 * n, seed)
                steady[lib].append(n / (t2 - t1) if t2 > t1 else float("nan"))
                whole[lib].append(2 * n / t2)
                record = {"algo": algo, "lib": lib, "seed": seed, "n": n, "t_n": t1, "t_2n": t2,
                          "steady_sps": steady[lib][-1], "whole_sps": whole[lib][-1]}  # fmt: skip
                with args.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"  {algo} seed {seed} {lib:4s}: T(N) {t1:6.1f} s  T(2N) {t2:6.1f} s  "
                    f"steady {steady[lib][-1]:7.0f} steps/s  whole {whole[lib][-1]:7.0f}",
                    flush=True,
                )
        med = {lib: statistics.median(steady[lib]) for lib in libs}
        medw = {lib: statistics.median(whole[lib]) for lib in libs}
        line = f"{algo:4s} {ENV[algo]:12s} N={n:6d}: " + "  ".join(
            f"{lib} {med[lib]:6.0f} ({medw[lib]:.0f} whole)" for lib in libs
        )
        line += "".join(
            f"  {mine}/{lib} {med[mine] / med[lib]:.2f}x ({medw[mine] / medw[lib]:.2f}x)"
            for mine in libs
            if mine in OURS
            for lib in libs
            if lib not in OURS
        )
        table.append(line)
        print(line, flush=True)
    print(f"\nsteady-state steps/s, medians of seeds {args.seeds} (whole-run in brackets)")
    print("\n".join(table))


if __name__ == "__main__":
    main()
