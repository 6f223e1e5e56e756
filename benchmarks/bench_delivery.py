"""Does a slow sink hold training back? PPO on CartPole with json + tensorboard, alone and
beside a plugin sink that sleeps per call (a remote store's round trip).

For each repeat it runs, back to back: the run without the slow sink, then with it
(``--delay`` seconds per call, 10 ms by default), and prints steps/s of training
(``TrainResult.wall_time_s``: start of training to the saved model) and end to end
(until the run is closed, the slow sink's queue drained), the ratio with/without, and
what ``run.json`` says the slow sink got (calls, dropped, undelivered) against the rows
of ``metrics.jsonl``. ``--stuck`` runs one more with a sink that never returns: it
must end within ``RL_TRAINING_SINK_CLOSE_TIMEOUT`` (set to 5 s here).

``--mlflow-server`` (needs ``pip install "./plugins/rl-training-mlflow[ui]"``) compares,
per repeat, the run without it, with the ``mlflow`` sink sending to a real ``mlflow
server`` on 127.0.0.1, and with that server killed (SIGKILL) once the first batch of
rows reached it: steps/s, and what ``run.json`` counts undelivered.

    python benchmarks/bench_delivery.py [--steps 50000] [--repeats 3] [--delay 0.01] [--stuck]
    python benchmarks/bench_delivery.py --mlflow-server [--steps 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rl_training import TrainConfig, train
from rl_training.testing import PluginInstaller, read_jsonl

SLOW_SINK = """
import time

import rl_training


class Slow:
    def __init__(self, run_context):
        pass

    def log_config(self, config):
        time.sleep(DELAY)

    def log_metrics(self, metrics, step):
        time.sleep(DELAY)

    def close(self):
        pass


@rl_training.hookimpl
def rl_training_log_sinks():
    return {"slow": Slow}
"""


def one_run(root: Path, steps: int, sinks: str, seed: int) -> tuple[float, float, Path]:
    """``(training steps/s, end-to-end steps/s, run directory)`` of one PPO run."""
    config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=seed, total_timesteps=steps,
                         output_dir=root, device="cpu", log_sinks=sinks)  # fmt: skip
    start = time.perf_counter()
    result = train(config)
    end_to_end = result.steps / (time.perf_counter() - start)
    return result.steps / result.wall_time_s, end_to_end, result.run_dir


def mlflow_server(steps: int, repeats: int) -> None:
    """Without mlflow / with mlflow on a live server / with the server killed mid-run."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "plugins" / "rl-training-mlflow"))
    from check_ui import Server

    batch = '"POST /api/2.0/mlflow/runs/log-batch'
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        root = Path(tmp)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        ratios: dict[str, list[float]] = {"live": [], "killed": []}
        for i in range(repeats):
            alone, _, _ = one_run(root / f"alone{i}", steps, "json,tensorboard", i)
            line = f"repeat {i}: alone {alone:6.0f} steps/s"
            for case in ("live", "killed"):
                server = Server(root / f"{case}{i}")
                server.root.mkdir()
                server.start()
                patch.setenv("MLFLOW_TRACKING_URI", server.uri)
                killer = threading.Thread(target=_kill_after, args=(server, batch), daemon=True)
                if case == "killed":
                    killer.start()
                try:
                    speed, _, run_dir = one_run(root / f"runs-{case}{i}", steps,
                                                "json,tensorboard,mlflow", i)  # fmt: skip
                finally:
                    server.kill()
                stats = json.loads((run_dir / "run.json").read_text())["sinks"]["mlflow"]
                rows = len(read_jsonl(run_dir / "metrics.jsonl"))
                ratios[case].append(speed / alone)
                line += (f" | {case} server {speed:6.0f} ({speed / alone:.3f}x), "
                         f"{stats['undelivered']}/{rows} rows undelivered")  # fmt: skip
            print(line, flush=True)
        print(f"median with/without mlflow: live server {statistics.median(ratios['live']):.3f}x,"
              f" server killed mid-run {statistics.median(ratios['killed']):.3f}x")  # fmt: skip


def _kill_after(server: object, batch: str) -> None:
    """Kill ``server`` once its log shows the params and a first batch of rows."""
    deadline = time.monotonic() + 120
    while server.requests(batch) < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)
    server.kill()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.01)
    parser.add_argument("--stuck", action="store_true")
    parser.add_argument("--mlflow-server", action="store_true")
    args = parser.parse_args()
    if args.mlflow_server:
        mlflow_server(args.steps, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        root = Path(tmp)
        plugins = PluginInstaller(root / "site", patch)
        plugins.install("rl-training-slow", SLOW_SINK.replace("DELAY", str(args.delay)))
        ratios, e2e_ratios = [], []
        for i in range(args.repeats):
            alone, alone_e2e, _ = one_run(root / "alone", args.steps, "json,tensorboard", i)
            slow, slow_e2e, run_dir = one_run(root / "slow", args.steps,
                                              "json,tensorboard,slow", i)  # fmt: skip
            stats = json.loads((run_dir / "run.json").read_text())["sinks"]["slow"]
            rows = len(read_jsonl(run_dir / "metrics.jsonl"))
            ratios.append(slow / alone)
            e2e_ratios.append(slow_e2e / alone_e2e)
            print(f"repeat {i}: training {alone:6.0f} -> {slow:6.0f} steps/s ({slow / alone:.3f}x)"
                  f"   end to end {alone_e2e:6.0f} -> {slow_e2e:6.0f} ({e2e_ratios[-1]:.3f}x)"
                  f"   slow sink: {stats['calls']} calls for {rows} rows + config, "
                  f"{stats['dropped']} dropped, {stats['undelivered']} undelivered",
                  flush=True)  # fmt: skip
        print(
            f"median with/without a {args.delay * 1000:g} ms sink: training "
            f"{statistics.median(ratios):.3f}x, end to end {statistics.median(e2e_ratios):.3f}x"
        )
        if args.stuck:
            plugins.install("rl-training-stuck", SLOW_SINK.replace("DELAY", "3600").replace(
                '"slow"', '"stuck"'))  # fmt: skip
            os.environ["RL_TRAINING_SINK_CLOSE_TIMEOUT"] = "5"
            start = time.perf_counter()
            _, _, run_dir = one_run(root / "stuck", args.steps, "json,tensorboard,stuck", 0)
            stats = json.loads((run_dir / "run.json").read_text())["sinks"]["stuck"]
            print(
                f"a sink that never returns: the run ended in {time.perf_counter() - start:.1f}"
                f" s (close timeout 5 s), {stats['undelivered']} calls undelivered"
            )
        plugins.uninstall_all()


if __name__ == "__main__":
    main()
