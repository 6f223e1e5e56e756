"""Delivery: background sinks on threads of their own never hold training back; what they
could not take is counted in run.json. Real threads, real processes and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from rl_training import CompositeLogger, create_run
from rl_training.experiment.delivery import SinkDeliveryWarning
from rl_training.experiment.logging import SinkFailureWarning
from rl_training.testing import SLOW_SINK_PLUGIN, read_jsonl


class Gate:
    """A background sink whose calls wait until the test opens its gate."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.gate = threading.Event()
        self.closed_with: str | None = None

    def log_config(self, config):
        self.gate.wait()
        self.calls.append(("config", dict(config)))

    def log_metrics(self, metrics, step):
        self.gate.wait()
        self.calls.append(("metrics", step, dict(metrics)))

    def close(self, status="finished"):
        self.closed_with = status


def _within(seconds: float, work) -> None:
    """Run ``work`` on a thread; fail if it has not returned after ``seconds``."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run():
        try:
            work()
        except BaseException as error:  # noqa: BLE001  # handed to the test
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(seconds), f"still blocked after {seconds} s"
    if failure:
        raise failure[0]


def test_a_blocked_background_sink_never_blocks_log_metrics():
    """Calls return while the sink is stuck; opened, it gets every call in order, then close."""
    sink = Gate()
    logger = CompositeLogger({"slow": sink})
    _within(10, lambda: [logger.log_metrics({"x": float(i)}, i) for i in range(50)])
    assert sink.calls == []  # nothing got through yet: the calls only queued
    sink.gate.set()
    logger.close("interrupted")
    assert [call[1] for call in sink.calls] == list(range(50))
    assert sink.closed_with == "interrupted"
    assert logger.delivery_stats()["slow"] == {
        "delivery": "background", "calls": 50, "dropped": 0, "undelivered": 0, "error": None
    }  # fmt: skip


def test_a_full_queue_drops_calls_for_that_sink_and_counts_them(monkeypatch):
    """RL_TRAINING_SINK_QUEUE=3: the calls beyond the queue are dropped, counted, warned once."""
    monkeypatch.setenv("RL_TRAINING_SINK_QUEUE", "3")
    sink = Gate()
    logger = CompositeLogger({"slow": sink})
    with pytest.warns(SinkDeliveryWarning, match="'slow' fell 3 calls behind"):
        for i in range(20):
            logger.log_metrics({"x": 1.0}, i)
    sink.gate.set()
    logger.close()
    stats = logger.delivery_stats()["slow"]
    assert stats["calls"] == 20 and stats["dropped"] == 20 - len(sink.calls)
    assert 3 <= len(sink.calls) <= 4  # the queue, and the call the thread holds
    assert [call[1] for call in sink.calls] == sorted(call[1] for call in sink.calls)


def test_close_gives_up_after_the_timeout_and_counts_what_was_abandoned(monkeypatch):
    """A sink that never returns: close ends after RL_TRAINING_SINK_CLOSE_TIMEOUT, warning."""
    monkeypatch.setenv("RL_TRAINING_SINK_CLOSE_TIMEOUT", "0.5")
    sink = Gate()  # its gate never opens
    logger = CompositeLogger({"stuck": sink})
    for i in range(5):
        logger.log_metrics({"x": 1.0}, i)
    abandoned = r"'stuck' did not finish .*TIMEOUT=0.5 s\); 5 call\(s\)"
    with pytest.warns(SinkDeliveryWarning, match=abandoned):
        _within(10, lambda: logger.close())
    assert logger.delivery_stats()["stuck"]["undelivered"] == 5  # 4 queued + the close item
    sink.gate.set()  # let the abandoned thread end


def test_a_failing_background_sink_is_warned_once_and_dropped():
    """An error on the sink's thread comes back at the next call: one warning, sink dropped."""

    class Failing:
        def log_config(self, config):
            pass

        def log_metrics(self, metrics, step):
            raise OSError("store unreachable")

        def close(self):
            pass

    logger = CompositeLogger({"remote": Failing()})
    logger.log_metrics({"x": 1.0}, 0)
    deadline = time.monotonic() + 10
    with pytest.warns(SinkFailureWarning, match="'remote' raised .* store unreachable"):
        while logger.sink_names and time.monotonic() < deadline:
            logger.log_metrics({"x": 1.0}, 1)
    assert logger.sink_names == ()
    logger.close()
    assert logger.delivery_stats()["remote"]["error"] == "OSError: store unreachable"


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_what_a_sink_reports_undelivered_is_counted_at_close(delivery):
    """A sink's own ``undelivered`` (rows its store never got), read after its close, is
    added to the count; an unusable report (negative, not an int, raising) adds nothing."""

    class Remote:
        def __init__(self):
            self.pending = 0

        def log_metrics(self, metrics, step):
            self.pending += 1  # a store that never answers

        def log_config(self, config):
            pass

        def close(self):
            self.undelivered = self.pending

    class Odd(Remote):
        def close(self):
            pass

        @property
        def undelivered(self):
            raise RuntimeError("not known")

    Remote.delivery = Odd.delivery = delivery
    odd_values = {"negative": -2, "text": "3", "flag": True}
    sinks = {"remote": Remote(), "raising": Odd()}
    for name, value in odd_values.items():
        sinks[name] = type(name, (), {"delivery": delivery, "undelivered": value,
                                      "log_metrics": lambda *a: None,
                                      "log_config": lambda *a: None,
                                      "close": lambda self: None})()  # fmt: skip
    logger = CompositeLogger(sinks)
    for i in range(7):
        logger.log_metrics({"x": 1.0}, i)
    logger.close()
    stats = logger.delivery_stats()
    assert stats["remote"]["undelivered"] == 7
    assert [stats[name]["undelivered"] for name in ["raising", *odd_values]] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("name", "value"),
    [("RL_TRAINING_SINK_QUEUE", "0"), ("RL_TRAINING_SINK_QUEUE", "many"),
     ("RL_TRAINING_SINK_CLOSE_TIMEOUT", "-1")],
)  # fmt: skip
def test_bad_delivery_settings_are_named(monkeypatch, name, value):
    """A bad queue size or close timeout is refused with its name and what is accepted."""
    monkeypatch.setenv(name, value)
    sink = Gate()
    sink.gate.set()
    with pytest.raises(ValueError, match=f"{name}: '{value}' is not"):
        CompositeLogger({"s": sink})


def test_an_unknown_delivery_is_refused():
    """delivery must be "inline" or "background"."""

    class Odd(Gate):
        delivery = "sometimes"

    with pytest.raises(ValueError, match="'odd' declares delivery = 'sometimes'"):
        CompositeLogger({"odd": Odd()})


def test_run_json_records_every_sinks_delivery(tmp_path, install_plugin):
    """run.json["sinks"]: delivery, calls, dropped, undelivered and error per sink."""
    install_plugin("rl-training-slow", SLOW_SINK_PLUGIN.replace("DELAY", "0.01"))
    with create_run("loop", output_dir=tmp_path, log_sinks="json,slow") as run:
        for step in range(20):
            run.logger.log_metrics({"loss": 0.5}, step)
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["sinks"] == {
        "json": {"delivery": "inline", "calls": 21, "dropped": 0, "undelivered": 0,
                 "error": None},
        "slow": {"delivery": "background", "calls": 21, "dropped": 0, "undelivered": 0,
                 "error": None},
    }  # fmt: skip
    assert (run.run_dir / "slow.txt").read_text() == " ".join(map(str, range(20))) + " finished"
    assert len(read_jsonl(run.run_dir / "metrics.jsonl")) == 20


def _rl_train_with_slow(tmp_path, **env: str) -> subprocess.Popen:
    """A long PPO run of rl-train logging to json and the installed ``slow`` sink."""
    return subprocess.Popen(
        [sys.executable, "-m", "rl_training", "--algo", "ppo", "--env-id", "CartPole-v1",
         "--total-timesteps", "10000000", "--output-dir", str(tmp_path / "runs"), "--quiet",
         "--log-sinks", "json,slow", "--hp", "n_steps=32", "--hp", "num_envs=2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
    )  # fmt: skip


def _stuck_run(tmp_path, install_plugin, close_timeout: str):
    """rl-train with a sink that never returns, once it has logged 20 rows."""
    install_plugin("rl-training-stuck", SLOW_SINK_PLUGIN.replace("DELAY", "3600"))
    proc = _rl_train_with_slow(tmp_path, RL_TRAINING_SINK_CLOSE_TIMEOUT=close_timeout)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        metrics = next((tmp_path / "runs").glob("*/metrics.jsonl"), None)
        if metrics and len(read_jsonl(metrics)) > 20:  # training runs while the sink is stuck
            return proc, metrics.parent
        if proc.poll() is not None:
            pytest.fail(proc.communicate()[1])
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("no rows in 90 s")


def _end(proc) -> tuple[str, float]:
    start = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    return stderr, time.monotonic() - start


def test_ctrl_c_ends_a_run_whose_sink_never_returns(tmp_path, install_plugin):
    """A sink stuck for good: SIGINT ends the run within the close timeout + 5 s,
    run.json "interrupted", the other sinks closed, exit 130."""
    proc, run_dir = _stuck_run(tmp_path, install_plugin, "2")
    os.killpg(proc.pid, signal.SIGINT)
    stderr, elapsed = _end(proc)
    assert proc.returncode == 130, stderr
    assert elapsed < 2 + 5, elapsed
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert info["sinks"]["slow"]["undelivered"] > 0 and info["sinks"]["json"]["error"] is None
    assert "'slow' did not finish" in stderr


def test_a_second_ctrl_c_ends_the_drain_at_once(tmp_path, install_plugin):
    """Close timeout 300 s, sink stuck: a second Ctrl-C gives up the drain, exit 130."""
    proc, run_dir = _stuck_run(tmp_path, install_plugin, "300")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(2)  # the run is closing now, waiting for the stuck sink
    os.killpg(proc.pid, signal.SIGINT)
    stderr, elapsed = _end(proc)
    assert proc.returncode == 130, stderr
    assert elapsed < 5, elapsed
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["sinks"]["slow"]["undelivered"] > 0
    assert "stopped by a second Ctrl-C" in stderr


def test_a_second_ctrl_c_interrupts_an_inline_sink_stuck_in_a_call(tmp_path, install_plugin):
    """An inline sink that never returns from log_metrics: Ctrl-C twice ends the run at
    once, the other sinks closed, run.json "interrupted", exit 130."""
    install_plugin("rl-training-stuck-inline", SLOW_SINK_PLUGIN.replace("DELAY", "3600").replace(
        "class Slow:", "class Slow:\n    delivery = 'inline'").replace(
        "time.sleep(3600)", "time.sleep(3600 if step > 200 else 0)"))  # fmt: skip
    proc = _rl_train_with_slow(tmp_path)
    deadline = time.monotonic() + 90
    metrics = None
    while time.monotonic() < deadline:  # wait until the rows stop: the sink is stuck
        metrics = next((tmp_path / "runs").glob("*/metrics.jsonl"), None)
        if metrics and any(row["step"] > 200 for row in read_jsonl(metrics)):
            break
        time.sleep(0.1)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)  # a stop request: the loop never gets to see it
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    stderr, elapsed = _end(proc)
    assert proc.returncode == 130, stderr
    assert elapsed < 10, elapsed
    assert metrics is not None
    info = json.loads((metrics.parent / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert (metrics.parent / "slow.txt").read_text().endswith("interrupted")  # closed
