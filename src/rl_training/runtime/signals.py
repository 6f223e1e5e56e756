"""Stopping on SIGINT and SIGTERM without splitting a row between sinks.

Python's default Ctrl-C handler raises ``KeyboardInterrupt`` wherever the main
thread is, which can be between two sinks of one ``log_metrics`` call. The
handlers here raise through :func:`raise_interrupt` instead, which holds the
exception while a row is being handed out (:data:`ROW_GUARD`), so an interrupted
run never leaves a row in ``metrics.jsonl`` that TensorBoard lacks.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the run closes ``"interrupted"``."""


class _RowGuard:
    """Makes each fan-out all-or-nothing with respect to interrupts.

    Signal handlers run on the main thread, between bytecodes: a counter and a
    slot suffice, no lock.
    """

    depth = 0
    pending: BaseException | None = None

    def __enter__(self) -> None:
        _RowGuard.depth += 1

    def __exit__(self, *exc: object) -> None:
        _RowGuard.depth -= 1
        if _RowGuard.depth == 0 and _RowGuard.pending is not None:
            pending, _RowGuard.pending = _RowGuard.pending, None
            raise pending


ROW_GUARD = _RowGuard()
"""``with ROW_GUARD:`` around handing one call to every sink."""


def raise_interrupt(exception: BaseException) -> None:
    """Raise ``exception`` now, or, inside a fan-out, as soon as every sink has the row."""
    if _RowGuard.depth:
        if _RowGuard.pending is None:
            _RowGuard.pending = exception
        return
    raise exception


STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run."""


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    ignore_stop_signals()  # a second signal must not cut the closing of the sinks short
    raise_interrupt(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (while a run is being closed)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`, never mid-row.

    The previous handlers are restored on leaving.
    """
    previous: dict[signal.Signals, Any] = {
        sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = [
    "ROW_GUARD",
    "STOP_SIGNALS",
    "Terminated",
    "ignore_stop_signals",
    "raise_interrupt",
    "stop_on_signals",
]
