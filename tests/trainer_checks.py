"""Checks shared by the trainer smoke tests: tiny real runs read back from disk."""

from __future__ import annotations

import json
import math

from rl_training import TrainConfig
from rl_training.testing import read_jsonl, read_scalars
from rl_training.trainers import TrainResult, train

WALL_CLOCK_KEYS = {"time", "time/sps"}
"""Fields that differ between two otherwise identical runs."""


def tiny_run(tmp_path, algo, env_id, total_timesteps, seed=0, **hyperparams) -> TrainResult:
    """Train ``algo`` for a handful of steps on the CPU with both built-in sinks."""
    config = TrainConfig(
        algo=algo,
        env_id=env_id,
        seed=seed,
        total_timesteps=total_timesteps,
        output_dir=tmp_path / "runs",
        device="cpu",
        log_sinks=("json", "tensorboard"),
        hyperparams=hyperparams,
    )
    return train(config)


def check_logged(result: TrainResult, expected_keys: set[str]) -> list[dict]:
    """The run logged ``expected_keys`` and the episode keys, in step order, to both sinks.

    Returns the metrics.jsonl rows.
    """
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    keys = set().union(*(row.keys() for row in rows)) - {"step", "time"}
    assert {"episode/return", "episode/length", "time/sps"} | expected_keys <= keys, keys
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps), "step must never decrease"
    assert steps[-1] <= result.steps
    assert max(row["step"] for row in rows if "time/sps" in row) == result.steps
    for row in rows:
        for key in keys & row.keys():
            assert isinstance(row[key], (int, float)) or row[key] in (
                "NaN",
                "Infinity",
                "-Infinity",
            )
    episodes = [row for row in rows if "episode/return" in row]
    assert episodes and all(row["episode/length"] >= 1 for row in episodes)

    scalars = read_scalars(result.run_dir / "tensorboard")
    for key in keys:
        json_points = [(row["step"], row[key]) for row in rows if key in row]
        tb_points = scalars[key]
        assert [s for s, _ in tb_points] == [s for s, _ in json_points], key
        for (_, a), (_, b) in zip(json_points, tb_points, strict=True):
            if isinstance(a, (int, float)) and math.isfinite(a) and key not in WALL_CLOCK_KEYS:
                assert b == float(a) or abs(b - a) <= 1e-6 * max(1.0, abs(a)), key

    run_info = json.loads((result.run_dir / "run.json").read_text())
    assert run_info["status"] == "finished"
    assert (result.run_dir / "model.pt").is_file()
    return rows


def without_wall_clock(rows: list[dict]) -> list[dict]:
    """Rows with the wall-clock fields removed, for comparing runs."""
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS} for row in rows]
