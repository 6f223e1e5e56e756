from rl_training.testing import SinkContract


class TestCsvSink(SinkContract):
    sink_name = "csv"
