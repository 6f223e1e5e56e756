"""progress.csv: what it holds, read back with the csv module."""

from __future__ import annotations

import csv
import math

from rl_training import create_training_run
from rl_training.testing import read_jsonl, tiny_config


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_keys_first_seen_mid_run_are_kept(tmp_path):
    """A key that appears late widens the header; earlier rows get empty cells, none are lost."""
    config = tiny_config(output_dir=tmp_path, log_sinks=("csv",))
    with create_training_run(config) as run:
        run.logger.log_metrics({"episode/return": 10.0}, 5)
        run.logger.log_metrics({"loss/value": 0.5, "episode/return": 12.0}, 10)
        run.logger.log_metrics({"time/sps": 100.0}, 15)
    rows = read(run.run_dir / "progress.csv")
    assert list(rows[0]) == ["step", "time", "episode/return", "loss/value", "time/sps"]
    assert [(r["step"], r["episode/return"], r["loss/value"], r["time/sps"]) for r in rows] == [
        ("5", "10.0", "", ""),
        ("10", "12.0", "0.5", ""),
        ("15", "", "", "100.0"),
    ]
    assert not list(run.run_dir.glob("*.tmp"))


def test_values_round_trip(tmp_path):
    """Floats keep full precision; ints, bools and non-finite values are readable."""
    config = tiny_config(output_dir=tmp_path, log_sinks=("csv",))
    with create_training_run(config) as run:
        run.logger.log_metrics({"f": 0.1 + 0.2, "i": 3, "b": True, "n": math.nan, "p": math.inf}, 0)
    (row,) = read(run.run_dir / "progress.csv")
    assert float(row["f"]) == 0.1 + 0.2
    assert (row["i"], row["b"], row["n"], row["p"]) == ("3", "True", "nan", "inf")
    assert math.isnan(float(row["n"]))


def test_listed_by_rl_train(tmp_path):
    """rl-train --list-sinks shows csv with this distribution."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "rl_training", "--list-sinks"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(line.startswith("csv ") and "rl-training-csv" in line for line in out.splitlines())


def test_a_resumed_run_keeps_one_history(tmp_path):
    """Resumed from its checkpoint, progress.csv keeps the rows up to S and continues."""
    from rl_training import resume, train

    config = tiny_config(
        output_dir=tmp_path, log_sinks=("csv", "json"), total_timesteps=128,
        hyperparams={"num_envs": 2, "n_steps": 16, "batch_size": 32, "n_epochs": 1},
    )  # fmt: skip
    first = train(config)
    resume(first.run_dir, total_timesteps=256)
    rows = read(first.run_dir / "progress.csv")
    steps = [int(row["step"]) for row in rows]
    json_steps = [row["step"] for row in read_jsonl(first.run_dir / "metrics.jsonl")]
    assert steps == json_steps and steps[-1] == 256
