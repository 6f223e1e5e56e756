"""Every built-in sink passes the reusable sink contract, read back through its own format."""

from __future__ import annotations

from rl_training.runtime.context import RunContext
from rl_training.testing import SinkContract, decode_json_number, read_jsonl, read_scalars


class TestJsonlSink(SinkContract):
    sink_name = "json"

    def read_back(self, run_context: RunContext):
        points: dict[str, list[tuple[int, float]]] = {}
        for row in read_jsonl(run_context.metrics_path):
            for key, value in row.items():
                if key not in ("step", "time"):
                    points.setdefault(key, []).append((row["step"], decode_json_number(value)))
        return points


class TestTensorBoardSink(SinkContract):
    sink_name = "tensorboard"

    def read_back(self, run_context: RunContext):
        return read_scalars(run_context.tensorboard_dir)
