"""Every built-in sink passes the reusable sink contract."""

from __future__ import annotations

from rl_training.testing import SinkContract


class TestJsonlSink(SinkContract):
    sink_name = "json"


class TestTensorBoardSink(SinkContract):
    sink_name = "tensorboard"
