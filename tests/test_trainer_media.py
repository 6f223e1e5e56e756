"""What trainers log beyond losses: success rates and info entries of finished episodes
(one process and torchrun), and histograms of every network parameter."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator as pea

from rl_training import ConfigError, train
from rl_training.testing import (
    killed_on_exit,
    read_jsonl,
    strict_json_loads,
    tiny_config,
    wait_for,
)

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))
import dist_envs  # noqa: E402, F401  # registers Goal-v0

HP = {"num_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 1}


def check_success_rows(rows: list[dict]) -> list[dict]:
    """Every episode row has success (0/1) and the rate over the last 100 episodes, and
    the numeric info entry; the non-numeric one is absent."""
    episodes = [r for r in rows if "episode/return" in r]
    assert episodes
    outcomes = []
    for row in episodes:
        success = row["episode/success"]
        assert success == float(row["episode/length"] >= 20)
        outcomes.append(success)
        assert row["episode/success_rate"] == pytest.approx(sum(outcomes[-100:]) /
                                                            len(outcomes[-100:]))  # fmt: skip
        assert isinstance(row["episode/distance"], float) and abs(row["episode/distance"]) < 5
        assert "episode/label" not in row
    assert 0 < sum(outcomes) < len(outcomes) or len(outcomes) < 5
    return episodes


def test_success_rate_and_info_keys_of_finished_episodes(tmp_path):
    """is_success in a finished episode's final info adds episode/success and
    episode/success_rate; --info-keys adds the numeric entries named."""
    result = train(tiny_config(env_id="Goal-v0", output_dir=tmp_path, total_timesteps=1024,
                               hyperparams=HP, info_keys="distance,label"))  # fmt: skip
    episodes = check_success_rows(read_jsonl(result.run_dir / "metrics.jsonl"))
    assert len(episodes) > 10
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["info_keys"] == ["distance", "label"]


def test_success_rate_under_torchrun(tmp_path):
    """Two ranks: their episodes, with success and info entries, in one run."""
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}  # fmt: skip
    env["PYTHONPATH"] = str(SUPPORT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "rl_training", "--algo", "ppo", "--env-id", "dist_envs:Goal-v0",
         "--total-timesteps", "1024", "--device", "cpu", "--output-dir", str(tmp_path),
         "--quiet", "--info-keys", "distance", *[a for k, v in HP.items() for a in
                                                 ("--hp", f"{k}={v}")]],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    episodes = check_success_rows(read_jsonl(run_dir / "metrics.jsonl"))
    assert sum(r["episode/length"] for r in episodes) > 0.8 * 1024


@pytest.mark.parametrize("value", ["a b", ["x", 1], "k,k"])
def test_bad_info_keys_are_named(value):
    """A key that is not one, or named twice, is refused with one line."""
    with pytest.raises(ConfigError, match="info_keys: "):
        tiny_config(info_keys=value)


def test_histograms_of_every_network_parameter(tmp_path):
    """--histogram-every N: weights/<network>/<parameter> at each multiple of N, in
    media.jsonl and TensorBoard's Histograms tab."""
    result = train(tiny_config(output_dir=tmp_path, total_timesteps=256, hyperparams=HP,
                               histogram_every=128, log_sinks=("json", "tensorboard")))  # fmt: skip
    lines = [
        strict_json_loads(x) for x in (result.run_dir / "media.jsonl").read_text().splitlines()
    ]
    keys = sorted({x["key"] for x in lines})
    assert keys and all(k.startswith("weights/agent/") for k in keys)
    assert any(k.endswith(".weight") for k in keys) and any(k.endswith(".bias") for k in keys)
    assert sorted({x["step"] for x in lines}) == [128, 256]
    assert all(x["kind"] == "histogram" and sum(x["counts"]) > 0 for x in lines)
    acc = pea.EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    for key in keys:
        assert acc.SummaryMetadata(key).plugin_data.plugin_name == "histograms"
        assert [e.step for e in acc.Tensors(key)] == [128, 256]
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    assert not any(k.startswith("weights/") for r in rows for k in r)
    assert not math.isnan(rows[-1]["step"])


def test_video_every_logs_one_deterministic_episode(tmp_path):
    """--video-every N: eval/video at each multiple of N, an animated GIF of at most
    video_length frames at the env's render_fps, in media/ and TensorBoard's Images."""
    import io

    from PIL import Image as PILImage

    result = train(tiny_config(env_id="Painted-v0", output_dir=tmp_path, total_timesteps=256,
                               hyperparams=HP, video_every=128, video_length=30,
                               log_sinks=("json", "tensorboard")))  # fmt: skip
    index = (result.run_dir / "media.jsonl").read_text()
    lines = [strict_json_loads(line) for line in index.splitlines()]
    assert [(x["key"], x["step"]) for x in lines] == [("eval/video", 128), ("eval/video", 256)]
    for line in lines:
        gif = PILImage.open(io.BytesIO((result.run_dir / line["path"]).read_bytes()))
        assert gif.format == "GIF" and gif.size == (60, 40)
        assert 2 <= line["frames"] <= 30 and line["fps"] == 50
        # Pillow merges repeated frames into one longer frame: the playing time is kept.
        durations = []
        for frame in range(gif.n_frames):
            gif.seek(frame)
            durations.append(gif.info["duration"])
        assert sum(durations) == line["frames"] * 20  # 50 frames per second
    acc = pea.EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    from tensorboard.util import tensor_util

    events = acc.Tensors("eval/video")
    assert [e.step for e in events] == [128, 256]
    _, _, data = tensor_util.make_ndarray(events[0].tensor_proto)
    assert PILImage.open(io.BytesIO(data)).format == "GIF"


def test_videos_are_recorded_in_a_child_process(tmp_path, monkeypatch):
    """The env of --video-every renders in another process (training keeps its GIL);
    the videos arrive whole and in order."""
    import os

    from rl_training import create_training_run
    from rl_training.trainers import fit

    pids = tmp_path / "pids"
    monkeypatch.setenv("RL_TEST_RENDER_PIDS", str(pids))
    config = tiny_config(env_id="Witnessed-v0", output_dir=tmp_path, total_timesteps=256,
                         hyperparams=HP, video_every=128, video_length=30,
                         log_sinks=("json",))  # fmt: skip
    with create_training_run(config) as run:
        pids.write_text("")  # frames rendered here before (the start's check) are not counted
        fit(run)
    rendered = {int(line) for line in pids.read_text().split()}
    assert rendered and os.getpid() not in rendered
    lines = [strict_json_loads(x) for x in (run.run_dir / "media.jsonl").read_text().split()]
    assert [(x["key"], x["step"]) for x in lines] == [("eval/video", 128), ("eval/video", 256)]
    assert all(2 <= x["frames"] <= 30 and (x["height"], x["width"]) == (40, 60) for x in lines)


def test_a_failing_recording_fails_the_run_with_the_envs_error(tmp_path, monkeypatch):
    """An env that breaks while the child records: the run fails with the env's own
    error in the message, and what was logged before stays."""
    monkeypatch.setenv("RL_TEST_RENDER_PIDS", str(tmp_path / "pids"))
    monkeypatch.setenv("RL_TEST_RENDER_FAIL_AT", "3")
    with pytest.raises(RuntimeError, match="the projector broke at frame 3"):
        train(tiny_config(env_id="Witnessed-v0", output_dir=tmp_path, total_timesteps=256,
                          hyperparams=HP, video_every=128, video_length=30))  # fmt: skip
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert read_jsonl(run_dir / "metrics.jsonl")


def test_an_env_a_child_cannot_import_is_recorded_on_a_thread(tmp_path, monkeypatch):
    """An env class defined in a function cannot be made by name in another process:
    its videos are recorded in this one, the same way."""
    import os

    import gymnasium as gym

    pids = tmp_path / "pids"
    monkeypatch.setenv("RL_TEST_RENDER_PIDS", str(pids))

    class Local(dist_envs.Witnessed):
        pass

    gym.register(id="LocalWitnessed-v0", entry_point=Local, max_episode_steps=500)
    try:
        result = train(tiny_config(env_id="LocalWitnessed-v0", output_dir=tmp_path,
                                   total_timesteps=256, hyperparams=HP, video_every=128,
                                   video_length=30, log_sinks=("json",)))  # fmt: skip
    finally:
        del gym.registry["LocalWitnessed-v0"]
    assert {int(line) for line in pids.read_text().split()} == {os.getpid()}
    lines = [strict_json_loads(x) for x in (result.run_dir / "media.jsonl").read_text().split()]
    assert [(x["key"], x["step"]) for x in lines] == [("eval/video", 128), ("eval/video", 256)]


def test_an_env_that_cannot_render_is_refused_before_anything_is_created(tmp_path):
    """rl-train --video-every on an env without rgb_array frames: one line, exit 2, no
    run directory."""
    env = {**__import__("os").environ, "PYTHONPATH": str(SUPPORT)}
    done = subprocess.run(
        [sys.executable, "-m", "rl_training", "--algo", "ppo", "--env-id", "dist_envs:Blind-v0",
         "--total-timesteps", "64", "--output-dir", str(tmp_path / "runs"), "--video-every",
         "32"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "video_every: env 'dist_envs:Blind-v0'" in errors[0], done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_ctrl_c_with_videos_under_way_ends_the_run(tmp_path):
    """SIGINT while videos are recorded on their thread: exit 130 within seconds,
    run.json "interrupted", every video logged so far whole in media.jsonl."""
    import os
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_training", "--algo", "ppo", "--env-id", "dist_envs:Painted-v0",
         "--total-timesteps", "10000000", "--output-dir", str(tmp_path / "runs"), "--quiet",
         "--video-every", "512", *[a for k, v in HP.items() for a in ("--hp", f"{k}={v}")]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    with killed_on_exit(proc):
        runs = tmp_path / "runs"
        wait_for(lambda: any(p.stat().st_size for p in runs.glob("*/media.jsonl")), proc, 120)
        os.kill(proc.pid, signal.SIGINT)
        stopped_at = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - stopped_at < 30
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    lines = [strict_json_loads(x) for x in (run_dir / "media.jsonl").read_text().splitlines()]
    assert lines and all((run_dir / x["path"]).is_file() for x in lines)
