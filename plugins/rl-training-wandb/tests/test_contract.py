from conftest import history
from rl_training.testing import SinkContract


class TestWandbSink(SinkContract):
    sink_name = "wandb"
    drops_points_after_resume_step = False  # W&B cannot delete logged points

    def read_back(self, run_context):
        """Every logged key's (env_step, value) points, from W&B's own reader."""
        points: dict[str, list[tuple[int, float]]] = {}
        for row in history(run_context.run_dir):
            for key, value in row.items():
                if not key.startswith("_") and key != "env_step":
                    points.setdefault(key, []).append((row["env_step"], value))
        return points
