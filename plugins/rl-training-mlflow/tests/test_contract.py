from rl_training.testing import SinkContract


class TestMlflowSink(SinkContract):
    sink_name = "mlflow"
    shared_files = ("mlflow.db", "mlflow-artifacts", ".mlflow.lock")  # one store per output dir
    drops_points_after_resume_step = False  # MLflow has no API to delete metric points
