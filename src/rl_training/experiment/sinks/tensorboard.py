"""The ``tensorboard`` sink: scalars, config text and hparams in the run's own event file."""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_training.experiment.media import Histogram, Image, Media, Text, Video, encoded
from rl_training.hookspecs import hookimpl
from rl_training.runtime.context import AppendOnlyFile

if TYPE_CHECKING:
    from rl_training.experiment.logging import Scalar, SinkFactory
    from rl_training.runtime.context import RunContext

# close(status) -> the hparams plugin's session status. Its enum has no "aborted":
# an interrupted run did not fail, so it is "unknown" rather than "failure".
_SESSION_STATUS = {
    "finished": "STATUS_SUCCESS",
    "failed": "STATUS_FAILURE",
    "interrupted": "STATUS_UNKNOWN",
}


class TensorBoardSink:
    """Write scalars, the config (text and hparams) into one event file in ``tensorboard_dir``.

    The file is TensorBoard's standard ``events.out.tfevents.*`` (TFRecord-framed
    ``Event`` protos), read by TensorBoard itself and by ``EventAccumulator``. It is
    written by :class:`EventFileWriter` rather than ``SummaryWriter``: one record per
    ``log_metrics`` call, appended with one ``write(2)`` before the call returns, so
    a killed process loses no logged row, and a write that fails (a full disk) raises
    here, with the file cut back to its last whole record, instead of in a writer
    thread. Every call is one event holding one ``Summary`` with a value per metric.
    The config goes in as a text table and as hparams session info in this same file
    (``SummaryWriter.add_hparams`` would open a subdirectory that TensorBoard lists as
    a second run).

    One curve per tag across resumes: TensorBoard's reader takes a run's first
    ``SessionLog.START`` as its start and every later one as a restart, dropping what
    came before it at its step or later. A fresh run's file begins with a START at
    step 0; a resumed run's (``resume_step`` S) with a START at S + 1, written twice
    where the run's earlier files hold none (a run written by a version before this
    rule), so that the second counts as the restart.

    How the session ended (HParams tab) goes into a file of its own,
    ``*.session-end``, that a resume deletes: TensorBoard keeps the first
    session end it reads, so an interrupted attempt's would otherwise outlive the
    resume that finishes the run.
    """

    delivery = "inline"
    """Called in the training thread: a row is on disk when ``log_metrics`` returns."""
    kinds = frozenset({"scalar", "image", "video", "histogram", "text"})

    def __init__(self, run_context: RunContext) -> None:
        # Imported here: listing sinks must not pay for importing tensorboard.
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._event = Event
        self._summary = Summary
        self._value = Summary.Value
        self._prefixes: dict[str, bytes] = {}  # tag -> its bytes in a scalar event
        resume = run_context.resume_step
        self._dir = run_context.tensorboard_dir
        starts = 1
        if resume is not None:
            self._dir.mkdir(exist_ok=True)  # deleted by hand: the resume starts it again
            for ended in self._dir.glob(f"events.out.tfevents.*{_SESSION_END}"):
                ended.unlink()
            starts = 1 if _holds_session_start(self._dir) else 2
        self._writer: EventFileWriter | None = EventFileWriter(self._dir)
        for _ in range(starts):
            self._writer.write(
                Event(step=0 if resume is None else resume + 1, wall_time=time.time(),
                      session_log=SessionLog(status=SessionLog.START))
            )  # fmt: skip
        # One session start per run: a resumed run's is in its first event file already.
        self._wrote_session = resume is not None
        self._config_step = 0 if resume is None else resume  # kept by a later purge

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Add the config as a Markdown table (Text tab) and as hparams (HParams tab)."""
        flat = flatten(config)
        rows = "\n".join(f"| {key} | {_markdown_cell(value)} |" for key, value in flat.items())
        self._add(_text_summary("config", "| key | value |\n|---|---|\n" + rows), self._config_step)
        if not self._wrote_session:  # the hparams plugin reads one session start per run
            experiment, session_start = _hparams(config)
            self._add(experiment, 0)
            self._add(session_start, 0)
            self._wrote_session = True

    def log_metrics(self, metrics: Mapping[str, Scalar | Media], step: int) -> None:
        """Add every value at ``step``, in one event: scalars as scalars, images as PNG
        and videos as animated GIF images (Images tab, as ``SummaryWriter.add_image`` /
        ``add_video`` write them), histograms (Histograms and Distributions tabs) and
        text (Text tab) through tensorboard's own summary functions."""
        if self._writer is None:
            raise RuntimeError("this tensorboard sink is closed")
        try:
            data = scalar_event(metrics, step, time.time(), self._prefixes)
        except (TypeError, OverflowError, struct.error):  # media, or beyond float32
            pass
        else:
            self._writer.write_serialized(data)
            return
        value = self._value
        values = [_media_value(value, key, v) if isinstance(v, Media) else
                  value(tag=key, simple_value=v) for key, v in metrics.items()]  # fmt: skip
        self._add(self._summary(value=values), step)

    def close(self, status: str = "finished") -> None:
        """Record how the session ended and close the event file."""
        writer = self._writer
        if writer is None:
            return
        try:
            if self._wrote_session:
                status_name = _SESSION_STATUS.get(status, "STATUS_UNKNOWN")
                ended = EventFileWriter(self._dir, suffix=_SESSION_END)
                try:
                    ended.write(self._event(wall_time=time.time(),
                                            summary=_session_end(status_name)))  # fmt: skip
                finally:
                    ended.close()
        finally:
            self._writer = None
            writer.close()

    def _add(self, summary: Any, step: int | None) -> None:
        if self._writer is None:
            raise RuntimeError("this tensorboard sink is closed")
        event = self._event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = step
        self._writer.write(event)


class EventFileWriter:
    """Appends ``Event`` records to a new ``events.out.tfevents.*`` file, synchronously.

    Each record is TFRecord-framed (length, masked CRC32C of the length, the
    serialised event, masked CRC32C of the event) and reaches the file in one
    ``write(2)`` before :meth:`write` returns.

    Args:
        log_dir: The directory of the file (it must exist).
        suffix: Appended to the file's name (it must still sort after earlier files).
    """

    _uid = itertools.count()

    def __init__(self, log_dir: Path, suffix: str = "") -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        # TensorBoard reads a directory's event files in name order, and a resumed run
        # relies on that order (its purge must come after the events it purges): the
        # timestamp, the first field that differs, is later than any file's already here.
        stamps = [_stamp(p.name) for p in log_dir.glob("events.out.tfevents.*")]
        stamp = max([int(time.time()), *(t + 1 for t in stamps if t is not None)])
        name = (
            f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(self._uid)}{suffix}"
        )
        self._file = AppendOnlyFile(log_dir / name, exclusive=True)
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: Any) -> None:
        """Append one event.

        Raises:
            OSError: it could not be written; the file is cut back to its last whole
                record, so every reader still sees every earlier event.
        """
        self.write_serialized(event.SerializeToString())

    def write_serialized(self, data: bytes) -> None:
        """Append one event already serialised (:meth:`write`'s errors)."""
        header = struct.pack("<Q", len(data))
        self._file.append(
            b"".join((header, struct.pack("<I", _masked_crc32c(header)), data,
                      struct.pack("<I", _masked_crc32c(data))))
        )  # fmt: skip

    @property
    def path(self) -> Path:
        """The event file."""
        return self._file.path

    def close(self) -> None:
        """fsync and close the file; a second call does nothing."""
        self._file.close()


_SESSION_END = ".session-end"
"""The name suffix of the event file holding how a session ended."""


def _holds_session_start(log_dir: Path) -> bool:
    """Whether an event file in ``log_dir`` starts with a ``SessionLog.START``.

    Every writer of this sink puts its START right after the file version, so the
    first two records of each file tell.
    """
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        with path.open("rb") as file:
            for _ in range(2):
                header = file.read(12)
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                data = file.read(length + 4)[:length]
                try:
                    event = Event.FromString(data)
                except Exception:  # noqa: BLE001  # a torn record: no START to find here
                    break
                if event.session_log.status == SessionLog.START:
                    return True
    return False


def _stamp(name: str) -> int | None:
    """The timestamp field of an event file's name."""
    parts = name.split(".")
    return int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None


def _crc32c_function() -> Callable[[bytes], int]:
    try:
        import google_crc32c  # a C implementation: ~0.2 us a record instead of ~50

        value: Callable[[bytes], int] = google_crc32c.value
        return value
    except ImportError:  # pragma: no cover  # platforms without its wheels
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c

        return crc32c  # type: ignore[no-any-return]


_crc32c = _crc32c_function()


_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


def _varint(number: int) -> bytes:
    """``number`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _value_prefix(tag: str) -> bytes:
    """``Summary.Value{tag}`` framed as field 1 of ``Summary``, up to its ``simple_value``
    (field 2, a float32, whose 4 bytes follow)."""
    name = tag.encode("utf-8")
    body = b"\x0a" + _varint(len(name)) + name + b"\x15"
    return b"\x0a" + _varint(len(body) + 4) + body


def scalar_event(
    metrics: Mapping[str, Any], step: int, wall_time: float, prefixes: dict[str, bytes]
) -> bytes:
    """The serialised ``Event{wall_time, step, summary{value: [{tag, simple_value}...]}}``
    of a row of scalars, byte for byte what ``Event.SerializeToString()`` gives, without
    building a message per value (a third of the sink's time per call). ``prefixes``
    caches each tag's bytes (:func:`_value_prefix`) between calls.

    Raises:
        TypeError: a value is not a real number (a media value).
        OverflowError: a value is beyond float32's range (protobuf makes it infinite).
    """
    parts = []
    for key, value in metrics.items():
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = prefixes[key] = _value_prefix(key)
        parts.append(prefix)
        parts.append(_pack_float(value))
    summary = b"".join(parts)
    head = b"\x09" + _pack_double(wall_time)
    if step:  # proto3 leaves a zero out
        head += b"\x10" + _varint(step)
    return head + b"\x2a" + _varint(len(summary)) + summary


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C (as ``tensorboard``'s own record writer computes it)."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _media_value(value: Any, tag: str, media: Media) -> Any:
    """The ``Summary.Value`` of one normalised media value."""
    if isinstance(media, (Image, Video)):
        from tensorboard.compat.proto.summary_pb2 import Summary

        if isinstance(media, Image):
            height, width, colours = media.data.shape
        else:  # a GIF is RGB whatever the frames were
            (_, height, width, _), colours = media.shape, 3
        return value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=colours,
                                                  encoded_image_string=encoded(media)))  # fmt: skip
    if isinstance(media, Histogram):
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb

        return histogram_pb(tag, media.values, buckets=media.bins).value[0]
    if isinstance(media, Text):
        from tensorboard.plugins.text.summary_v2 import text_pb

        return text_pb(tag, media.text).value[0]
    raise TypeError(f"tensorboard sink: no summary for {type(media).__name__} {tag!r}")


def _text_summary(tag: str, text: str) -> Any:
    """A summary the Text tab shows (what ``SummaryWriter.add_text`` builds)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name="text", content=TextPluginData(version=0).SerializeToString()
        )
    )
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[text.encode("utf-8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    return Summary(
        value=[Summary.Value(tag=tag + "/text_summary", metadata=metadata, tensor=tensor)]
    )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _markdown_cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _plugin_summary(tag: str, **content: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    data = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
    plugin_data = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()
    )
    return Summary(
        value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin_data))]
    )


HPARAMS_METRICS: tuple[str, ...] = ("episode/return_mean", "eval/mean_return")
"""The metrics the HParams tab compares runs by."""


def _hparams(config: Mapping[str, Any]) -> tuple[Any, Any]:
    """The experiment declaration and this run's session start, through tensorboard's
    ``hparams.summary_v2`` API (which works without TensorFlow).

    For a built-in trainer's run the hyperparameter domain is the algorithm, the env,
    the seed and every hyperparameter of every registered algorithm, so whichever
    run's declaration TensorBoard reads first covers all runs of the directory; the
    output directory, sinks and device are not hyperparameters. Another run's
    config gives its own scalar entries.
    """
    from tensorboard.plugins.hparams import summary_v2 as hp

    resolved = config.get("resolved_hyperparams")
    if isinstance(resolved, Mapping) and "algo" in config:
        from rl_training.registry import ALGORITHMS, ALGOS

        values: dict[str, Any] = {k: config[k] for k in ("algo", "env_id", "seed") if k in config}
        values.update({f"hyperparams.{k}": v for k, v in resolved.items()})
        names = ["algo", "env_id", "seed"] + sorted(
            {
                f"hyperparams.{name}"
                for spec in ALGORITHMS.values()
                for name in spec.hyperparam_names
            }
        )
        domains: dict[str, Any] = {"algo": hp.Discrete(list(ALGOS))}
        overridden = config.get("hyperparams")
        varied = {"algo", "env_id", "seed", "hyperparams.learning_rate"} | {
            f"hyperparams.{k}" for k in (overridden if isinstance(overridden, Mapping) else ())
        }
    else:
        values = flatten(config)
        names, domains, varied = list(values), {}, set(values)
    session = {k: _hparam_value(v) for k, v in values.items() if v is not None}
    declared = [hp.HParam(name, domains.get(name)) for name in names]
    metrics = [hp.Metric(tag) for tag in HPARAMS_METRICS]
    return _mark_varied(hp.hparams_config_pb(declared, metrics), varied), hp.hparams_pb(session)


def _mark_varied(summary: Any, varied: set[str]) -> Any:
    """Set ``differs`` on the declared hyperparameters that runs usually vary.

    TensorBoard's HParams backend orders hyperparameters with ``differs`` first, then
    by name, when it serves a declared experiment.
    """
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    (value,) = summary.value
    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    for info in experiment.hparam_infos:
        info.differs = info.name in varied
    data = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, experiment=experiment)
    value.metadata.plugin_data.content = data.SerializeToString()
    return summary


def _hparam_value(value: Any) -> bool | int | float | str:
    """A session value the hparams plugin stores: lists and mappings as their JSON text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def _session_end(status: str) -> Any:
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionEndInfo

    info = SessionEndInfo(status=Status.Value(status), end_time_secs=time.time())
    return _plugin_summary(metadata.SESSION_END_INFO_TAG, session_end_info=info)


@hookimpl
def rl_training_log_sinks() -> dict[str, SinkFactory]:
    """Offer the ``tensorboard`` sink."""
    return {"tensorboard": TensorBoardSink}
