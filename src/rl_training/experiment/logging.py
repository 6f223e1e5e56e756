"""The logging interfaces and ``CompositeLogger``, the one layer that validates.

Trainers talk to a :class:`Logger`; the run setup gives them a
:class:`CompositeLogger` that checks and normalises each call once and fans it out
to every :class:`Sink`. Sinks therefore only ever see plain Python values: an
``int`` step, ``int``/``float``/``bool`` metrics and a JSON-shaped config, and, for
the kinds a sink declares in ``kinds``, normalised
:mod:`~rl_training.experiment.media` values.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import numbers
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, Union, runtime_checkable

import numpy as np

from rl_training.experiment.delivery import (
    BackgroundSink,
    DeliveryStats,
    close_timeout,
    delivery_of,
    queue_size,
)
from rl_training.experiment.media import KINDS, Media, normalize_media
from rl_training.runtime.signals import ROW_GUARD, raise_interrupt

if TYPE_CHECKING:
    import torch

    from rl_training.runtime.context import RunContext

ScalarLike: TypeAlias = Union[bool, int, float, "np.generic", "np.ndarray", "torch.Tensor"]
"""A metric value: a Python or numpy real/bool scalar, or a one-element array or
tensor (on any device). Strings, ``None``, complex numbers and several-element
arrays are rejected with ``TypeError``."""

Scalar: TypeAlias = bool | int | float
"""What sinks receive for each metric."""

Metrics: TypeAlias = Mapping[str, ScalarLike]
"""One ``log_metrics`` call's values, by metric key (``namespace/name``)."""

RESERVED_KEYS: frozenset[str] = frozenset({"step", "time"})
"""Keys that belong to the row itself, not to a metric."""

MAX_STEP = 2**63 - 1
"""The largest step: TensorBoard (and most stores) keep steps as signed 64-bit ints."""

_MAX_FLOAT_INT = int(sys.float_info.max)
"""Ints beyond this have no float, which TensorBoard and most stores need."""

STATUSES: tuple[str, ...] = ("finished", "failed", "interrupted")
"""How a run can end: the values ``close(status=...)`` accepts."""


@runtime_checkable
class Logger(Protocol):
    """What a trainer logs through."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's configuration."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record one row of metrics at ``step`` (environment steps so far)."""

    def close(self, status: str = "finished") -> None:
        """Flush and release everything; ``status`` is one of :data:`STATUSES`."""


@runtime_checkable
class Sink(Protocol):
    """A destination for logs. Called positionally with already-normalised values.

    ``close`` may take ``status`` as a keyword or take nothing at all.
    """

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the JSON-shaped configuration."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record plain ``int``/``float``/``bool`` values at an ``int`` step."""

    def close(self) -> None:
        """Flush and release; may also accept ``status=...``."""


SinkFactory: TypeAlias = Callable[["RunContext"], Sink]
"""``factory(run_context) -> Sink``: what a plugin offers under a sink name."""

RowObserver: TypeAlias = Callable[[Mapping[str, Scalar], int], None]
"""``observer(metrics, step)``: sees each normalised row after every sink has it
(``rl-train``'s progress display is one)."""


def closing_status(exc_type: type[BaseException] | None) -> str:
    """The status a ``with`` block closes a logger or run with: ``"finished"`` on a
    normal exit, ``"interrupted"`` by ``KeyboardInterrupt`` (and SIGTERM, which
    ``rl-train`` delivers as one), ``"failed"`` by any other exception."""
    if exc_type is None:
        return "finished"
    if issubclass(exc_type, KeyboardInterrupt):
        return "interrupted"
    return "failed"


class SinkFailureWarning(RuntimeWarning):
    """A sink raised, was reported once and dropped; the other sinks go on."""


class SinkKindWarning(RuntimeWarning):
    """A value of a kind a sink does not take was left out of its call (once per sink
    and kind)."""


def kinds_of(name: str, sink: object) -> frozenset[str]:
    """The kinds of value a sink takes: its ``kinds``, or scalars only.

    Raises:
        ValueError: ``kinds`` names something else (the sink and the value are named).
    """
    declared = getattr(sink, "kinds", None)
    if declared is None:
        return frozenset({"scalar"})
    kinds = frozenset([declared] if isinstance(declared, str) else declared)
    unknown = sorted(kinds - set(KINDS))
    if unknown or isinstance(declared, str):
        from rl_training.errors import ConfigError

        raise ConfigError(
            f"log sink {name!r} declares kinds = {declared!r}; accepted: a set of "
            f"{', '.join(map(repr, KINDS))}"
        )
    return kinds


class CompositeLogger:
    """Fan every call out, in order, to a set of named sinks.

    A sink that declares ``delivery = "inline"`` is called in the caller's thread; any
    other is fed through a :class:`~rl_training.experiment.delivery.BackgroundSink`
    (its own thread and bounded queue), so it never holds the caller back.

    Args:
        sinks: Sink name -> sink. The order is the fan-out order.
        strict: Raise a sink's error (after every other sink got the call) instead
            of warning once and dropping that sink.

    Raises:
        ValueError: a sink declares an unknown delivery, ``RL_TRAINING_SINK_QUEUE`` is
            not a positive integer or ``RL_TRAINING_SINK_CLOSE_TIMEOUT`` not a number of
            seconds.
    """

    def __init__(self, sinks: Mapping[str, Sink], *, strict: bool = False) -> None:
        self._strict = strict
        self._closed = False
        self._observers: list[RowObserver] = []
        # Keys already checked: a row's keys repeat, so each is checked once per logger.
        self._known_keys: set[str] = set()
        self._stats = {name: DeliveryStats(delivery_of(name, s)) for name, s in sinks.items()}
        self._kinds = {name: kinds_of(name, s) for name, s in sinks.items()}
        self._left_out: set[tuple[str, str]] = set()  # (sink, kind) warned about
        background = any(s.delivery == "background" for s in self._stats.values())
        capacity, timeout = (queue_size(), close_timeout()) if background else (0, 0.0)
        # Decided once: whether each sink's close() takes the status keyword.
        self._close_takes_status = {name: _accepts_status(s) for name, s in sinks.items()}
        self._sinks: dict[str, Sink] = {}
        self._given = dict(sinks)  # as given, for what they report at close
        for name, sink in sinks.items():
            if self._stats[name].delivery == "background":
                sink = BackgroundSink(name, sink, takes_status=self._close_takes_status[name],
                                      stats=self._stats[name], capacity=capacity,
                                      close_timeout=timeout)  # fmt: skip
                self._close_takes_status[name] = True
            self._sinks[name] = sink

    def delivery_stats(self) -> dict[str, dict[str, Any]]:
        """Per sink: its delivery, calls, dropped, undelivered and error (``run.json``'s
        ``"sinks"``), the sinks dropped after an error included."""
        return {name: stats.as_dict() for name, stats in self._stats.items()}

    @property
    def sink_names(self) -> tuple[str, ...]:
        """Names of the sinks still receiving calls."""
        return tuple(self._sinks)

    def add_observer(self, observer: RowObserver) -> None:
        """Show every later row to ``observer``, after the sinks, with plain values.

        An observer is not a sink: it writes nothing of the run, and an error it
        raises propagates to the caller of ``log_metrics``.
        """
        self._observers.append(observer)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Normalise ``config`` to JSON types and hand it to every sink.

        Raises:
            RuntimeError: the logger is closed.
            TypeError: ``config`` is not a mapping.
        """
        self._check_open()
        if not isinstance(config, Mapping) and not dataclasses.is_dataclass(config):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        plain = normalize_config(config)
        self._fan_out("log_config", plain)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Validate and normalise the whole call, then hand it to every sink.

        Validated before any sink is called, so a bad value writes nothing anywhere.

        Raises:
            RuntimeError: the logger is closed.
            TypeError: a value is not :data:`ScalarLike` (the key is named), or
                ``step`` is not an integer.
            ValueError: ``step`` is negative or beyond :data:`MAX_STEP`; a key is
                reserved, empty or not encodable as UTF-8; an int is beyond float range.
        """
        self._check_open()
        plain_step = normalize_step(step)
        plain, media = _normalize(metrics, self._known_keys)
        if not plain:
            return
        if media:
            self._fan_out_mixed(plain, media, plain_step)
            plain = {k: v for k, v in plain.items() if k not in media}
        else:
            self._fan_out("log_metrics", plain, plain_step)
        if plain:
            for observer in self._observers:
                observer(plain, plain_step)

    def close(self, status: str = "finished") -> None:
        """Close every sink (passing ``status`` where its ``close`` accepts it).

        Calling it again does nothing.

        Raises:
            ValueError: ``status`` is not one of :data:`STATUSES`.
        """
        if status not in STATUSES:
            raise ValueError(f"status: {status!r} is not one of {', '.join(map(repr, STATUSES))}")
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for name, sink in list(self._sinks.items()):
            try:
                if self._close_takes_status[name]:
                    sink.close(status=status)  # type: ignore[call-arg]  # checked above
                else:
                    sink.close()
            except BaseException as error:  # one sink must not stop the rest
                if isinstance(error, KeyboardInterrupt):
                    raise
                errors.append(error)
                if self._stats[name].error is None:
                    self._stats[name].error = f"{type(error).__name__}: {error}"
                self._report(name, "close", error)
        self._sinks.clear()
        for name, sink in self._given.items():
            self._stats[name].undelivered += _reported_undelivered(sink)
        if errors and self._strict:
            raise errors[0]

    def __enter__(self) -> CompositeLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(closing_status(exc_type))

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this logger is closed; open a new run to log more")

    def _fan_out(self, method: str, *args: Any, rows: dict[str, Any] | None = None) -> None:
        """Call ``method(*args)`` on every sink; with ``rows``, a ``log_metrics`` call
        gives each sink its own row (sinks not in ``rows`` are skipped)."""
        first_error: BaseException | None = None
        with ROW_GUARD:  # an interrupt waits until every sink has this call
            for name, sink in list(self._sinks.items()):
                if rows is not None:
                    if name not in rows:
                        continue
                    args = (rows[name], args[1])
                try:
                    if self._stats[name].delivery == "inline":
                        self._stats[name].calls += 1  # a background sink counts its own
                    getattr(sink, method)(*args)
                except BaseException as error:  # one sink must not stop the rest...
                    if isinstance(error, KeyboardInterrupt):  # ...but Ctrl-C stops everything
                        raise
                    if first_error is None:
                        first_error = error
                    if not self._strict:
                        self._drop(name, method, error)
        if first_error is not None and self._strict:
            raise first_error

    def _fan_out_mixed(self, row: dict[str, Any], media: dict[str, str], step: int) -> None:
        """Give each sink the values of the kinds it takes (``media``: key -> kind of the
        non-scalar values), warning once per sink and kind left out; a sink left with
        nothing is not called."""
        rows: dict[str, dict[str, Any]] = {}
        for name in self._sinks:
            kinds = self._kinds[name]
            missing = {kind for kind in media.values() if kind not in kinds}
            if not missing:
                rows[name] = row
                continue
            for kind in sorted(k for k in missing if (name, k) not in self._left_out):
                self._left_out.add((name, kind))
                warnings.warn(
                    f"log sink {name!r} does not take {kind} values; they are left out of "
                    f"its calls (it takes: {', '.join(sorted(kinds))})",
                    SinkKindWarning,
                    stacklevel=4,
                )
            scalar = "scalar" in kinds
            kept = {k: v for k, v in row.items()
                    if (media[k] in kinds if k in media else scalar)}  # fmt: skip
            if kept:
                rows[name] = kept
        self._fan_out("log_metrics", row, step, rows=rows)

    def _drop(self, name: str, method: str, error: BaseException) -> None:
        sink = self._sinks.pop(name)
        if self._stats[name].error is None:
            self._stats[name].error = f"{type(error).__name__}: {error}"
        self._report(name, method, error)
        try:  # release its files; it has been reported already, so stay quiet
            if self._close_takes_status[name]:
                sink.close(status="failed")  # type: ignore[call-arg]
            else:
                sink.close()
        except BaseException as error:  # noqa: BLE001
            if isinstance(error, KeyboardInterrupt):
                raise

    def _report(self, name: str, method: str, error: BaseException) -> None:
        if self._strict:
            return
        warnings.warn(
            f"log sink {name!r} raised in {method}() and was dropped: "
            f"{type(error).__name__}: {error}",
            SinkFailureWarning,
            stacklevel=4,
        )


def _reported_undelivered(sink: object) -> int:
    """What a sink says it took but could not deliver (its optional ``undelivered``:
    rows a remote store never got), 0 when it says nothing usable."""
    try:
        count = getattr(sink, "undelivered", 0)
    except Exception:  # noqa: BLE001  # a property that raises reports nothing
        return 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return 0
    return count


def _accepts_status(sink: object) -> bool:
    close = getattr(sink, "close", None)
    if close is None:
        return False
    try:
        parameters = inspect.signature(close).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        p.name == "status"
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


# -- normalisation ---------------------------------------------------------------------


def normalize_step(step: object) -> int:
    """A non-negative Python ``int`` from a Python, numpy or torch integer.

    Raises:
        TypeError: not an integer (``bool`` and floats included).
        ValueError: negative, or beyond :data:`MAX_STEP`.
    """
    tensor_type = _tensor_type()
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"step must be a non-negative integer, got bool {step!r}")
    if isinstance(step, (int, np.integer)):
        value = int(step)
    elif tensor_type is not None and isinstance(step, tensor_type) and step.numel() == 1:
        item = step.item()
        if type(item) is not int:  # float, complex and bool tensors are not steps
            raise TypeError(f"step must be a non-negative integer, got tensor {step!r}")
        value = item
    else:
        raise TypeError(
            f"step must be a non-negative integer (Python, numpy or torch), got "
            f"{type(step).__name__} {step!r}"
        )
    if not 0 <= value <= MAX_STEP:
        raise ValueError(
            f"step must be a non-negative integer up to 2**63 - 1 (a signed 64-bit int), "
            f"got {value}"
        )
    return value


def normalize_metrics(
    metrics: Mapping[str, Any], known_keys: set[str] | None = None
) -> dict[str, Any]:
    """Check every key and value; return plain Python scalars (and normalised
    :mod:`~rl_training.experiment.media` values) in the same order.

    Tensors on an accelerator are gathered per device and copied to the host in
    one transfer, so a call with many CUDA scalars costs one synchronisation.

    Args:
        metrics: One row.
        known_keys: Keys checked before (they are skipped); new good keys are added.

    Raises:
        TypeError: ``metrics`` is not a mapping, a key is not a string, or a value
            is not :data:`ScalarLike` (the key is named).
        ValueError: a key is empty, reserved (:data:`RESERVED_KEYS`) or not
            encodable as UTF-8 (a lone surrogate); an int is beyond float range; a
            media value's shape, range or parameter is wrong.
    """
    return _normalize(metrics, known_keys)[0]


def _normalize(
    metrics: Mapping[str, Any], known_keys: set[str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`normalize_metrics`, and the kind of each non-scalar value by key."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of str to scalar, got {type(metrics).__name__}")
    out: dict[str, Any] = {}
    tensors: dict[Any, list[tuple[str, Any]]] = {}  # device -> [(key, tensor)]
    media: list[tuple[str, Media]] = []
    tensor_type = _tensor_type()
    for key, value in metrics.items():
        if known_keys is None or key not in known_keys:
            _check_key(key)
            if known_keys is not None:
                known_keys.add(key)
        # Fast path first: plain Python numbers are what trainers mostly log.
        kind = type(value)
        if kind is float or kind is bool:
            out[key] = value
        elif kind is int:
            out[key] = _check_int(key, value)
        elif tensor_type is not None and isinstance(value, tensor_type):
            if value.is_cpu:  # nothing to transfer: .item() is the cheapest read
                out[key] = _tensor_item(key, value)
            else:
                if value.numel() != 1:
                    raise TypeError(
                        f"metric {key!r}: a tensor of {value.numel()} elements is not a scalar"
                    )
                if value.dtype.is_complex:
                    raise TypeError(f"metric {key!r}: complex tensor {value!r} is not real")
                out[key] = None  # placeholder keeps the key order
                tensors.setdefault(value.device, []).append((key, value))
        elif isinstance(value, (np.generic, np.ndarray)):
            out[key] = _numpy_scalar(key, value)
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            out[key] = _check_int(key, int(value))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, bool):  # a bool subclass
            out[key] = bool(value)
        elif isinstance(value, Media):
            out[key] = None  # placeholder keeps the key order
            media.append((key, value))
        else:
            raise TypeError(
                f"metric {key!r}: {type(value).__name__} {value!r} is not a scalar "
                "(accepted: bool, int, float, a numpy scalar, or a one-element array or "
                "tensor) nor an Image, Video, Histogram or Text"
            )
    for items in tensors.values():
        _gather_to_host(items, out)
    if not media:
        return out, {}
    out.update(normalize_media(media))
    return out, {key: value.kind for key, value in media}


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"metric key {key!r} is not a string")
    if not key or key in RESERVED_KEYS:
        raise ValueError(
            f"metric key {key!r} is reserved or empty (reserved: "
            f"{', '.join(sorted(RESERVED_KEYS))}); pick another name"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"metric key {key!r} is not valid text ({error.reason} at position "
            f"{error.start}); keys must be encodable as UTF-8"
        ) from None


def _check_int(key: str, value: int) -> int:
    if -_MAX_FLOAT_INT <= value <= _MAX_FLOAT_INT:
        return value
    raise ValueError(
        f"metric {key!r}: an int of {value.bit_length()} bits is beyond float range "
        "(about +-1.8e308), which sinks such as TensorBoard need"
    )


def _gather_to_host(items: list[tuple[str, Any]], out: dict[str, Any]) -> None:
    """One device-to-host copy (one synchronisation) for a device's tensors of one call."""
    torch = _torch()
    if len(items) == 1:
        ((key, tensor),) = items
        out[key] = _from_item(tensor.item(), tensor.dtype)
        return
    flat = [t.detach() if t.dim() == 0 else t.detach().reshape(()) for _, t in items]
    if len({t.dtype for t in flat}) == 1:  # tolist() already gives the right Python types
        host = torch.stack(flat).cpu().tolist()
        for (key, _), value in zip(items, host, strict=True):
            out[key] = value
        return
    # Mixed dtypes: float64 holds bools, floats and ints up to 2**53 exactly.
    host = torch.stack([t.to(torch.float64) for t in flat]).cpu().tolist()
    for (key, tensor), value in zip(items, host, strict=True):
        out[key] = _from_item(value, tensor.dtype)


def _tensor_item(key: str, tensor: Any) -> Scalar:
    """A CPU tensor's one element as the Python type ``.item()`` gives for its dtype."""
    try:
        value = tensor.item()
    except RuntimeError:  # more or fewer than one element
        raise TypeError(
            f"metric {key!r}: a tensor of {tensor.numel()} elements is not a scalar"
        ) from None
    if type(value) is complex:
        raise TypeError(f"metric {key!r}: complex tensor {tensor!r} is not a real number")
    return value  # type: ignore[no-any-return]  # bool, int or float by dtype


def _from_item(value: Any, dtype: Any) -> Scalar:
    torch = _torch()
    if dtype == torch.bool:
        return bool(value)
    if dtype.is_floating_point:
        return float(value)
    return int(value)


def _numpy_scalar(key: str, value: np.generic | np.ndarray) -> Scalar:
    if value.size != 1:
        raise TypeError(f"metric {key!r}: an array of {value.size} elements is not a scalar")
    if value.dtype.kind not in "biuf":
        raise TypeError(
            f"metric {key!r}: numpy {value.dtype} value {value!r} is not a real number or bool"
        )
    item = value.item() if isinstance(value, np.generic) else value.reshape(()).item()
    return item  # type: ignore[no-any-return]  # .item() of kind b/i/u/f is bool/int/float


def _tensor_type() -> type[Any] | None:
    # Look torch up only if it is already imported: a program that never made a
    # tensor does not pay for importing torch here.
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _is_tensor(value: object) -> bool:
    tensor_type = _tensor_type()
    return tensor_type is not None and isinstance(value, tensor_type)


def _torch() -> Any:
    import torch

    return torch


def normalize_config(value: Any) -> Any:
    """A JSON-shaped copy: dicts with str keys, lists, str, numbers, bool, None.

    Dataclasses become dicts, tuples and sets lists, numpy and one-element torch
    values Python numbers, and anything else (a ``Path``, an enum...) its ``str``.
    Text that is not valid Unicode keeps its odd characters as ``\\uXXXX`` escapes,
    so every sink can store it.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):
            return value.value if isinstance(value.value, (str, int, float)) else str(value)
        return _text(value) if isinstance(value, str) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        raw = to_dict() if callable(to_dict) else dataclasses.asdict(value)
        return normalize_config(raw)
    if isinstance(value, Mapping):
        return {_text(str(k)): normalize_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [normalize_config(v) for v in items]
    if isinstance(value, (np.generic, np.ndarray)):
        return normalize_config(value.tolist())
    if _is_tensor(value):
        return normalize_config(value.detach().cpu().tolist())
    return _text(str(value))


def _text(value: str) -> str:
    """``value``, or where it is not valid Unicode (a file name that is not UTF-8,
    decoded with surrogates) the same text with those characters as ``\\udcXX``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


__all__ = [
    "MAX_STEP",
    "RESERVED_KEYS",
    "STATUSES",
    "CompositeLogger",
    "Logger",
    "Metrics",
    "RowObserver",
    "Scalar",
    "ScalarLike",
    "Sink",
    "SinkFactory",
    "SinkFailureWarning",
    "closing_status",
    "normalize_config",
    "normalize_metrics",
    "normalize_step",
    "raise_interrupt",
]
