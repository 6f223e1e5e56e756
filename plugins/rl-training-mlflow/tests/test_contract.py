from rl_training.testing import SinkContract


class TestMlflowSink(SinkContract):
    sink_name = "mlflow"
