"""The ``tensorboard`` sink: scalars, config text and hparams in the run's own event file."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rl_training.hookspecs import hookimpl

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
    """Write through ``torch.utils.tensorboard.SummaryWriter`` into ``tensorboard_dir``.

    Every ``log_metrics`` call becomes one event holding one ``Summary`` with a value
    per metric (``add_scalar`` would build, checksum and queue one event per metric).
    The config goes in as a text table and as hparams session info in this same
    event file: ``SummaryWriter.add_hparams`` would open a timestamped subdirectory
    that TensorBoard lists as a second run. The hparams plugin then finds the metrics
    to compare among this run's own scalars.
    """

    def __init__(self, run_context: RunContext) -> None:
        # Imported here: listing sinks must not pay for importing torch.
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter

        self._summary = Summary
        self._value = Summary.Value
        self._writer: Any = SummaryWriter(log_dir=str(run_context.tensorboard_dir))
        self._file_writer = self._writer._get_file_writer()  # type: ignore[no-untyped-call]
        self._wrote_session = False

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Add the config as a Markdown table (Text tab) and as hparams (HParams tab)."""
        flat = flatten(config)
        rows = "\n".join(f"| {key} | {_markdown_cell(value)} |" for key, value in flat.items())
        self._writer.add_text("config", "| key | value |\n|---|---|\n" + rows, global_step=0)
        if not self._wrote_session:  # the hparams plugin reads one session start per run
            self._file_writer.add_summary(_session_start(flat), 0)
            self._wrote_session = True

    def log_metrics(self, metrics: Mapping[str, Scalar], step: int) -> None:
        """Add every metric as a scalar at ``step``, in one event."""
        value = self._value
        summary = self._summary(
            value=[value(tag=key, simple_value=v) for key, v in metrics.items()]
        )
        self._file_writer.add_summary(summary, step, time.time())

    def close(self, status: str = "finished") -> None:
        """Record how the session ended, flush and close the event file."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            if self._wrote_session:
                self._file_writer.add_summary(
                    _session_end(_SESSION_STATUS.get(status, "STATUS_UNKNOWN")), None
                )
            writer.flush()
        finally:
            writer.close()


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


def _session_start(flat: Mapping[str, Any]) -> Any:
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionStartInfo

    info = SessionStartInfo(start_time_secs=time.time())
    for key, value in flat.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        elif isinstance(value, str):
            info.hparams[key].string_value = value
        elif value is not None:  # lists and empty mappings: compared as their JSON text
            info.hparams[key].string_value = json.dumps(value)
    return _plugin_summary(metadata.SESSION_START_INFO_TAG, session_start_info=info)


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
