"""Delivery: a background sink gets its calls on a thread of its own, so it never holds
training back.

A sink declares ``delivery = "inline"`` (called in the training thread: the built-in
``json`` and ``tensorboard`` sinks, whose rows are on disk when ``log_metrics``
returns) or ``"background"``; one that declares nothing is background.
:class:`BackgroundSink` puts such a sink behind a bounded queue
(``RL_TRAINING_SINK_QUEUE`` calls, default 10000) served in order by one thread:
``log_metrics`` only enqueues, a call that finds the queue full is dropped for that
sink and counted, and at close the queue is drained for at most
``RL_TRAINING_SINK_CLOSE_TIMEOUT`` seconds (default 30); what is left is abandoned
with a warning naming the sink and the count. :class:`DeliveryStats` is what
``run.json`` records of every sink under ``"sinks"``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from rl_training.errors import ConfigError
from rl_training.runtime.signals import hurry_requested

DELIVERIES = ("inline", "background")
"""The values a sink's ``delivery`` attribute may take."""

QUEUE_ENV = "RL_TRAINING_SINK_QUEUE"
CLOSE_TIMEOUT_ENV = "RL_TRAINING_SINK_CLOSE_TIMEOUT"
DEFAULT_QUEUE = 10_000
DEFAULT_CLOSE_TIMEOUT = 30.0


class SinkDeliveryWarning(RuntimeWarning):
    """A background sink's calls were dropped (full queue) or abandoned at close."""


@dataclass
class DeliveryStats:
    """What became of one sink's calls (``run.json["sinks"][name]``)."""

    delivery: str
    calls: int = 0
    """``log_config``/``log_metrics`` calls the sink was given (or offered, if dropped)."""
    dropped: int = 0
    """Calls dropped because the sink's queue was full."""
    undelivered: int = 0
    """Calls still queued when the close timeout ran out (abandoned), plus what the sink
    itself reports in an ``undelivered`` attribute at close (calls it took but its
    store never got: a tracking server gone away)."""
    error: str | None = None
    """The error that dropped the sink, as text; ``None`` if it never raised."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON-shaped record."""
        return {
            "delivery": self.delivery,
            "calls": self.calls,
            "dropped": self.dropped,
            "undelivered": self.undelivered,
            "error": self.error,
        }

    @property
    def lost(self) -> int:
        """Calls that never reached the sink."""
        return self.dropped + self.undelivered


def delivery_of(name: str, sink: object) -> str:
    """The sink's declared delivery, ``"background"`` when it declares none.

    Raises:
        ValueError: it declares something else (the sink and the value are named).
    """
    delivery = getattr(sink, "delivery", "background")
    if delivery not in DELIVERIES:
        raise ConfigError(
            f"log sink {name!r} declares delivery = {delivery!r}; accepted: "
            f"{', '.join(map(repr, DELIVERIES))}"
        )
    return str(delivery)


def queue_size() -> int:
    """``RL_TRAINING_SINK_QUEUE`` (a positive number of calls; 10000 if unset).

    Raises:
        ValueError: it is set to something else.
    """
    return int(_setting(QUEUE_ENV, DEFAULT_QUEUE, int, lambda v: v >= 1, "a positive integer"))


def close_timeout() -> float:
    """``RL_TRAINING_SINK_CLOSE_TIMEOUT`` (seconds, 0 or more; 30 if unset).

    Raises:
        ValueError: it is set to something else.
    """
    return float(
        _setting(
            CLOSE_TIMEOUT_ENV,
            DEFAULT_CLOSE_TIMEOUT,
            float,
            lambda v: v >= 0,
            "a number of seconds, 0 or more",
        )  # fmt: skip
    )


def _setting(name: str, default: float, kind: type, valid: Any, accepted: str) -> float:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not valid(value) or value != value:  # NaN is no number of seconds
        raise ConfigError(f"{name}: {text!r} is not {accepted}")
    return float(value)


_CLOSE = object()
"""The queue's last item: close the sink."""


class BackgroundSink:
    """``sink`` behind a bounded queue and a thread of its own (see the module docstring).

    It is itself a sink: the composite calls it in the training thread, where a call
    only enqueues. An error of the sink, raised in its thread, is raised again from
    the next call made here (so the composite warns once and drops it, or raises it
    with ``strict``); what was queued behind the error is counted as undelivered.

    Args:
        name: The sink's name, for warnings.
        sink: The sink.
        takes_status: Whether ``sink.close`` accepts ``status=``.
        stats: Where its calls are counted.
        capacity: Queue size in calls.
        close_timeout: Seconds :meth:`close` waits for the queue to drain.
    """

    delivery = "inline"  # the wrapper itself never blocks the caller

    def __init__(
        self,
        name: str,
        sink: Any,
        *,
        takes_status: bool,
        stats: DeliveryStats,
        capacity: int,
        close_timeout: float,
    ) -> None:
        self._name, self._sink, self._takes_status = name, sink, takes_status
        self._close_timeout = close_timeout
        self._stats = stats
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._error: BaseException | None = None
        self._reported = False
        self._closing = False
        self._thread = threading.Thread(
            target=self._serve, name=f"rl-training sink {name}", daemon=True
        )
        self._thread.start()

    def log_config(self, config: Any) -> None:
        """Queue ``sink.log_config(config)``."""
        self._offer(("log_config", (config,)))

    def log_metrics(self, metrics: Any, step: int) -> None:
        """Queue ``sink.log_metrics(metrics, step)``; dropped and counted if the queue is full."""
        self._offer(("log_metrics", (metrics, step)))

    def close(self, status: str = "finished") -> None:
        """Let the thread deliver what is queued and close the sink, for at most
        ``RL_TRAINING_SINK_CLOSE_TIMEOUT`` seconds; then abandon the rest with a warning.

        Raises:
            BaseException: the sink's error, if it raised and was not reported yet.
        """
        if self._closing:
            return
        self._closing = True
        deadline = time.monotonic() + self._close_timeout
        while True:  # room for the close item, even in a full queue
            try:
                self._queue.put((_CLOSE, status), timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() >= deadline or not self._thread.is_alive():
                    break
        while self._thread.is_alive() and time.monotonic() < deadline and not hurry_requested():
            self._thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
        if self._thread.is_alive():
            left = self._queue.qsize()
            self._stats.undelivered += left
            why = ("a second Ctrl-C" if hurry_requested() else
                   f"{CLOSE_TIMEOUT_ENV}={self._close_timeout:g} s")  # fmt: skip
            warnings.warn(
                f"log sink {self._name!r} did not finish (stopped by {why}); {left} call(s) "
                "abandoned",
                SinkDeliveryWarning,
                stacklevel=3,
            )
        self._raise_error()

    # -- the training thread -------------------------------------------------------------

    def _offer(self, item: tuple[str, tuple[Any, ...]]) -> None:
        self._raise_error()
        self._stats.calls += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._stats.dropped += 1
            if self._stats.dropped == 1:
                warnings.warn(
                    f"log sink {self._name!r} fell {self._queue.maxsize} calls behind; calls "
                    f"are dropped for it until it catches up ({QUEUE_ENV} sets the queue)",
                    SinkDeliveryWarning,
                    stacklevel=4,
                )

    def _raise_error(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    # -- the sink's thread ---------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            method, args = self._queue.get()
            if method is _CLOSE:
                if self._error is None:
                    self._call(self._close_sink, args)
                return
            if self._error is not None:  # the sink is dropped: what was queued is lost
                self._stats.undelivered += 1
                continue
            self._call(getattr(self._sink, method), *args)

    def _close_sink(self, status: str) -> None:
        if self._takes_status:
            self._sink.close(status=status)
        else:
            self._sink.close()

    def _call(self, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except BaseException as error:  # noqa: BLE001  # handed to the training thread
            self._error = error
            self._stats.error = f"{type(error).__name__}: {error}"


__all__ = [
    "BackgroundSink",
    "DELIVERIES",
    "DeliveryStats",
    "SinkDeliveryWarning",
    "close_timeout",
    "delivery_of",
    "queue_size",
]
