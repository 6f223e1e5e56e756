"""Stopping on SIGINT and SIGTERM: gracefully first, at once on a second Ctrl-C.

Inside :func:`graceful_stop` the first SIGINT or SIGTERM only records a stop
request; the training loop sees it at its next whole-state point, writes a
checkpoint and ends the run ``"interrupted"``. A second signal stops at once: it
raises ``KeyboardInterrupt`` (SIGINT) or :class:`Terminated` (SIGTERM), which also
closes every sink with ``"interrupted"``. While a run is being closed
(:func:`shielded`), a second signal is ignored, so closing is never cut short.

An exception raised by a signal handler could land between two sinks of one
``log_metrics`` call; :func:`raise_interrupt` holds it while a row is being handed
out (:data:`ROW_GUARD`), so an interrupted run never leaves a row in
``metrics.jsonl`` that TensorBoard lacks. Unless the hand-out has taken more than
:data:`STUCK_AFTER` seconds: then a sink is stuck inside a call, the row cannot be
completed anyway, and the interrupt is raised at once.
"""

from __future__ import annotations

import signal
import threading
import time
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
    entered_at = 0.0
    from_signal = False
    """Whether ``pending`` is a stop signal's (then the process is only closing after it)."""

    def __enter__(self) -> None:
        if _RowGuard.depth == 0:
            _RowGuard.entered_at = time.monotonic()
        _RowGuard.depth += 1

    def __exit__(self, *exc: object) -> None:
        _RowGuard.depth -= 1
        if _RowGuard.depth == 0 and _RowGuard.pending is not None:
            pending, _RowGuard.pending = _RowGuard.pending, None
            if _RowGuard.from_signal:
                _RowGuard.from_signal = False
                ignore_stop_signals()  # from now on the run is only being closed
            raise pending


ROW_GUARD = _RowGuard()
"""``with ROW_GUARD:`` around handing one call to every sink."""


STUCK_AFTER = 1.0
"""Seconds a fan-out may take before an interrupt stops waiting for it."""


def raise_interrupt(exception: BaseException) -> bool:
    """Raise ``exception`` now, or, inside a fan-out, as soon as every sink has the row
    (``False``: it was deferred). A fan-out stuck for over :data:`STUCK_AFTER` seconds
    (an inline sink that does not return) is not waited for."""
    if _RowGuard.depth and time.monotonic() - _RowGuard.entered_at < STUCK_AFTER:
        if _RowGuard.pending is None:
            _RowGuard.pending = exception
        return False
    _RowGuard.pending = None
    raise exception


STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run."""


class _State:
    requested: int | None = None
    """The first stop signal received, if any."""
    shielded = 0
    """Depth of :func:`shielded` blocks, in which a second signal is ignored."""
    graceful = False
    """Whether a :func:`graceful_stop` block is open (an inner one does nothing)."""
    hurry = False
    """A second stop signal came while a run was being closed (:func:`shielded`)."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception that stops a run for ``signum``: ``Terminated`` for SIGTERM."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def requested_stop() -> int | None:
    """The signal that asked the run to stop (``SIGINT``/``SIGTERM``), or ``None``."""
    return _State.requested


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _State.requested is None:
        _State.requested = signum  # the loop stops at its next whole-state point
        return
    if _State.shielded:
        _State.hurry = True  # the run is being closed already: let it finish, but fast
        return
    if _RowGuard.depth and time.monotonic() - _RowGuard.entered_at < STUCK_AFTER:
        _RowGuard.from_signal = True
        raise_interrupt(interrupt_for(signum))  # deferred; a later signal may not wait
        return
    ignore_stop_signals()  # from now on the run is only being closed
    raise_interrupt(interrupt_for(signum))


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (a process that is only finishing)."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


@contextmanager
def graceful_stop(*, restore: bool = True) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask for a stop; a second one stops at once.

    A no-op off the main thread (Python delivers signals to the main thread only).

    Args:
        restore: Put the previous handlers back on leaving. ``rl-train`` keeps its
            own to the end (it ignores signals once the run is closed), so that a late
            Ctrl-C cannot interrupt the interpreter's shutdown.
    """
    if threading.current_thread() is not threading.main_thread() or _State.graceful:
        # Nested (rl-train around train()): the outer block's handlers and any stop
        # already requested stay as they are.
        yield
        return
    _State.requested, _State.hurry = None, False
    previous: dict[signal.Signals, Any] = {
        sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS
    }
    _State.graceful = True
    try:
        yield
    finally:
        _State.graceful = False
        if restore:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _State.requested = None


def hurry_requested() -> bool:
    """Whether a second stop signal came while a run was being closed: what waits
    there (a background sink draining its queue) should give up at once."""
    return _State.hurry


@contextmanager
def shielded() -> Iterator[None]:
    """Ignore a second stop signal within the block: it closes a run, which must finish."""
    _State.shielded += 1
    try:
        yield
    finally:
        _State.shielded -= 1


__all__ = [
    "ROW_GUARD",
    "STOP_SIGNALS",
    "Terminated",
    "graceful_stop",
    "hurry_requested",
    "ignore_stop_signals",
    "interrupt_for",
    "raise_interrupt",
    "requested_stop",
    "shielded",
]
