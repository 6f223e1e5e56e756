"""Log a few hundred rows through a real run, then read them back as users do.

python examples/log_demo.py [OUTPUT_DIR]
"""

from __future__ import annotations

import math
import sys

from rl_training import TrainConfig, create_training_run
from rl_training.testing import read_jsonl, read_scalars


def main() -> None:
    output_dir = sys.argv[1] if len(sys.argv) > 1 else "runs"
    config = TrainConfig(
        algo="ppo", env_id="CartPole-v1", seed=0, total_timesteps=300, output_dir=output_dir
    )
    with create_training_run(config, run_suffix="demo") as run:
        for step in range(0, config.total_timesteps, 10):
            run.logger.log_metrics(
                {"episode/return": 20 + 10 * math.sin(step / 50), "loss/policy": 1 / (1 + step)},
                step,
            )
    rows = read_jsonl(run.run_context.metrics_path)
    scalars = read_scalars(run.run_context.tensorboard_dir)
    print(f"run directory: {run.run_dir}")
    print(f"metrics.jsonl rows: {len(rows)}; TensorBoard tags: {sorted(scalars)}")
    print(f"view it: tensorboard --logdir {output_dir}")


if __name__ == "__main__":
    main()
