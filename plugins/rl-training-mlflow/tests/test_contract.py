from rl_training.testing import SinkContract


class TestMlflowSink(SinkContract):
    sink_name = "mlflow"
    shared_files = ("mlflow.db", "mlflow-artifacts", ".mlflow.lock")  # one store per output dir
