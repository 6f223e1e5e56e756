"""Fingerprint of what each trainer computes: a hash of its rows and final weights.

A refactor that must not change what is learned (issue 21) is checked by running
this before and after it: the same seed, the same budget, the same hashes. Rows are
hashed without ``time`` and ``time/sps`` (the clock), weights as their exact bytes.

    python benchmarks/rows_fingerprint.py [ppo a2c dqn sac td3] [--steps N]

To fingerprint another checkout, put its ``src`` first on the path:
``PYTHONPATH=/path/to/other/src python benchmarks/rows_fingerprint.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

import rl_training
from rl_training import TrainConfig
from rl_training.trainers import train

CASES = {
    "ppo": ("CartPole-v1", 4096, {"n_steps": 256, "num_envs": 2}),
    "a2c": ("CartPole-v1", 4096, {}),
    "dqn": ("CartPole-v1", 3000, {"learning_starts": 500, "train_freq": 4}),
    "sac": ("Pendulum-v1", 600, {"learning_starts": 200, "net_arch": [64, 64]}),
    "td3": ("Pendulum-v1", 600, {"learning_starts": 200, "net_arch": [64, 64]}),
}


def fingerprint(algo: str, steps: int | None) -> tuple[str, str, int]:
    """``(rows hash, weights hash, number of rows)`` of one seeded run."""
    env_id, budget, hp = CASES[algo]
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(algo=algo, env_id=env_id, seed=3, total_timesteps=steps or budget,
                             output_dir=out, device="cpu", log_sinks=("json",),
                             hyperparams=hp)  # fmt: skip
        result = train(config)
        rows = []
        for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            row.pop("time"), row.pop("time/sps", None)
            rows.append(json.dumps(row, sort_keys=True))
        model = torch.load(Path(result.run_dir) / "model.pt", weights_only=True)
        weights = hashlib.sha256()
        for name in sorted(model["state_dicts"]):
            for key, tensor in sorted(model["state_dicts"][name].items()):
                weights.update(key.encode() + tensor.numpy().tobytes())
        digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        return digest[:16], weights.hexdigest()[:16], len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algos", nargs="*", default=list(CASES))
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    print(f"rl_training from {Path(rl_training.__file__).parent}")
    for algo in args.algos:
        rows, weights, n = fingerprint(algo, args.steps)
        print(f"{algo}: rows {rows} weights {weights} ({n} rows)", flush=True)


if __name__ == "__main__":
    main()
