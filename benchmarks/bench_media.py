"""What media cost: per call through the composite vs ``SummaryWriter``, and in training.

``calls``: a 64x64x3 image and a 100-frame 64x64 video logged through the composite to
json + tensorboard (both inline: PNG/GIF encoded in the caller's thread, once for both
sinks) against ``SummaryWriter.add_image`` / ``add_video`` (``add_video`` needs
moviepy; without it the video line is skipped). Medians over ``--calls`` calls.

``training``: PPO CartPole, ``--steps`` steps, json + tensorboard, without video and
with ``--video-every`` (classic control renders with pygame: ``pip install
"gymnasium[classic-control]"``), alternating, ``--repeats`` pairs; steps/s of training
and the ratio.

    python benchmarks/bench_media.py calls [--calls 50]
    python benchmarks/bench_media.py training [--steps 50000] [--video-every 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def per_call(log, calls: int) -> float:
    """Median seconds of ``log(i)`` over ``calls`` calls (after one warm-up)."""
    log(0)
    times = []
    for i in range(1, calls + 1):
        start = time.perf_counter()
        log(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calls_benchmark(calls: int) -> None:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from rl_training import Image, Video, create_run

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    video = rng.integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        with create_run("bench-media", output_dir=tmp) as run:
            ours_image = per_call(lambda i: run.logger.log_metrics({"img": Image(image)}, i), calls)
            ours_video = per_call(lambda i: run.logger.log_metrics(
                {"vid": Video(video, fps=30)}, i), max(3, calls // 5))  # fmt: skip
        writer = SummaryWriter(str(Path(tmp) / "naive"))
        theirs_image = per_call(lambda i: writer.add_image("img", image, i, dataformats="HWC"),
                                calls)  # fmt: skip
        try:
            import moviepy  # noqa: F401  # add_video writes nothing without it
        except ImportError:
            theirs_video = None
        else:
            clip = torch.from_numpy(video).permute(0, 3, 1, 2)[None]  # (N, T, C, H, W)
            theirs_video = per_call(lambda i: writer.add_video("vid", clip, i, fps=30),
                                    max(3, calls // 5))  # fmt: skip
        writer.close()
    print(f"64x64x3 image: composite json+tensorboard {ours_image * 1e3:.2f} ms/call, "
          f"SummaryWriter.add_image {theirs_image * 1e3:.2f} ms/call "
          f"({ours_image / theirs_image:.2f}x)")  # fmt: skip
    if theirs_video is None:
        print(f"100x64x64 video: composite {ours_video * 1e3:.1f} ms/call; SummaryWriter."
              "add_video skipped (needs moviepy)")  # fmt: skip
    else:
        print(f"100x64x64 video: composite json+tensorboard {ours_video * 1e3:.1f} ms/call, "
              f"SummaryWriter.add_video {theirs_video * 1e3:.1f} ms/call "
              f"({ours_video / theirs_video:.2f}x)")  # fmt: skip


def training_benchmark(steps: int, video_every: int, repeats: int) -> None:
    from rl_training import TrainConfig, train

    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            speeds = []
            for every in (0, video_every):
                config = TrainConfig(algo="ppo", env_id="CartPole-v1", seed=i, device="cpu",
                                     total_timesteps=steps, output_dir=Path(tmp) / f"v{every}",
                                     video_every=every)  # fmt: skip
                result = train(config)
                speeds.append(result.steps / result.wall_time_s)
            ratios.append(speeds[1] / speeds[0])
            print(f"repeat {i}: without video {speeds[0]:6.0f} steps/s, with --video-every "
                  f"{video_every} {speeds[1]:6.0f} ({ratios[-1]:.3f}x)", flush=True)  # fmt: skip
    print(f"median with/without video: {statistics.median(ratios):.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("calls", "training"))
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--video-every", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "calls":
        calls_benchmark(args.calls)
    else:
        training_benchmark(args.steps, args.video_every, args.repeats)


if __name__ == "__main__":
    main()
