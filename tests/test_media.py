"""Images, videos, histograms and text through the composite, read back from both
built-in sinks: TensorBoard's own reader, the PNG and GIF decoded, media.jsonl strictly."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util

from rl_training import CompositeLogger, Histogram, Image, Text, Video, create_training_run
from rl_training.experiment.logging import SinkKindWarning
from rl_training.experiment.run import create_run_context
from rl_training.experiment.sinks.jsonl import JsonlSink, media_segments
from rl_training.experiment.sinks.tensorboard import TensorBoardSink
from rl_training.testing import read_jsonl, strict_json_loads, tiny_config

SINKS = ("json", "tensorboard")


def accumulator(run_dir):
    acc = pea.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def media_lines(run_dir):
    return [strict_json_loads(line) for line in (run_dir / "media.jsonl").read_text().splitlines()]


def decode(data: bytes):
    return PILImage.open(io.BytesIO(data))


def log_every_kind(run, step=5):
    gradient = np.linspace(0, 1, 16 * 24 * 3).reshape(16, 24, 3)
    frames = torch.arange(7 * 8 * 10 * 3, dtype=torch.int64).reshape(7, 8, 10, 3) % 256
    run.logger.log_metrics(
        {
            "loss": 0.5,
            "eval/frame": Image(gradient, caption="start"),
            "eval/video": Video(frames.to(torch.uint8), fps=25),
            "weights/w": Histogram(torch.tensor([0.0, 1.0, 1.0, 2.0, float("nan")]), bins=4),
            "notes": Text("**bold** note"),
        },
        step,
    )


def test_every_kind_reaches_tensorboard_and_the_json_sink(tmp_path):
    """One call, mixed: the scalar in metrics.jsonl only; PNG and animated GIF files
    with their media.jsonl lines; histogram and text in TensorBoard's tabs and in
    media.jsonl. Read back with TensorBoard's own reader and decoded."""
    with create_training_run(tiny_config(output_dir=tmp_path, log_sinks=SINKS)) as run:
        log_every_kind(run)
    rows = read_jsonl(run.run_dir / "metrics.jsonl")
    assert [set(r) - {"time"} for r in rows] == [{"step", "loss"}]
    lines = media_lines(run.run_dir)
    assert [(x["key"], x["kind"], x["step"]) for x in lines] == [
        ("eval/frame", "image", 5), ("eval/video", "video", 5),
        ("weights/w", "histogram", 5), ("notes", "text", 5),
    ]  # fmt: skip
    image = decode((run.run_dir / lines[0]["path"]).read_bytes())
    assert image.format == "PNG" and image.size == (24, 16) and lines[0]["caption"] == "start"
    assert np.asarray(image)[0, 0].tolist() == [0, 0, 0]
    assert np.asarray(image)[-1, -1].tolist() == [255, 255, 255]
    gif = decode((run.run_dir / lines[1]["path"]).read_bytes())
    assert gif.format == "GIF" and gif.size == (10, 8) and gif.n_frames == 7
    assert lines[1]["fps"] == 25 and lines[1]["frames"] == 7
    assert lines[2]["counts"] == [1, 2, 0, 1] or sum(lines[2]["counts"]) == 4
    assert len(lines[2]["bins"]) == 5 and lines[2]["nonfinite"] == 1
    assert lines[3]["text"] == "**bold** note"
    assert all(x["path"].startswith("media/") for x in lines[:2])

    acc = accumulator(run.run_dir)
    tags = acc.Tags()["tensors"]
    assert {"loss", "eval/frame", "eval/video", "weights/w", "notes"} <= set(tags)
    (frame,) = acc.Tensors("eval/frame")
    width, height, png = tensor_util.make_ndarray(frame.tensor_proto)
    assert (int(width), int(height)) == (24, 16) and decode(png).format == "PNG"
    (video,) = acc.Tensors("eval/video")
    _, _, gif_data = tensor_util.make_ndarray(video.tensor_proto)
    assert decode(gif_data).n_frames == 7
    assert acc.SummaryMetadata("weights/w").plugin_data.plugin_name == "histograms"
    (histogram,) = acc.Tensors("weights/w")
    buckets = tensor_util.make_ndarray(histogram.tensor_proto)
    assert buckets.shape == (4, 3) and buckets[:, 2].sum() == 4  # the NaN left out
    assert acc.SummaryMetadata("notes").plugin_data.plugin_name == "text"
    (text,) = acc.Tensors("notes")
    assert tensor_util.make_ndarray(text.tensor_proto).item() == b"**bold** note"


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (Image(np.zeros((4, 4, 2), np.uint8)), ValueError, "'bad'.*shape \\(4, 4, 2\\)"),
        (Image(np.full((4, 4), 1.5)), ValueError, "'bad'.*floats from 1.5 to 1.5.*\\[0, 1\\]"),
        (Image(np.zeros((4, 4), np.int32)), TypeError, "'bad'.*dtype int32.*uint8"),
        (Image(np.zeros((3, 4, 4)), dataformats="NCHW"), ValueError, "'bad'.*'HWC', 'CHW'"),
        (Image([[0, 1]]), TypeError, "'bad'.*list is not an array"),
        (Video(np.zeros((0, 4, 4, 3), np.uint8)), ValueError, "'bad'.*T, H and W at least 1"),
        (Video(np.zeros((2, 4, 4, 3), np.uint8), fps=0), ValueError, "'bad'.*fps 0"),
        (Histogram(np.array(["a"])), TypeError, "'bad'.*real numbers"),
        (Histogram(np.zeros(3), bins=0), ValueError, "'bad'.*bins 0"),
        (Text(b"bytes"), TypeError, "'bad'.*Text of bytes.*a str"),
    ],
)
def test_a_bad_value_is_named_and_the_call_writes_nothing(tmp_path, value, error, match):
    """Wrong shape, range, dtype or parameter: the key and what is accepted are named,
    and no sink got any of the call (not even its good values)."""
    with create_training_run(tiny_config(output_dir=tmp_path, log_sinks=SINKS)) as run:
        with pytest.raises(error, match=match):
            run.logger.log_metrics({"good": 1.0, "img": Image(np.zeros((2, 2), np.uint8)),
                                    "bad": value}, 1)  # fmt: skip
    assert read_jsonl(run.run_dir / "metrics.jsonl") == []
    assert not (run.run_dir / "media.jsonl").exists() and not (run.run_dir / "media").exists()
    assert "good" not in accumulator(run.run_dir).Tags()["tensors"]


def test_channel_first_grey_and_float_images_are_normalised():
    """CHW, (H, W) and float input all reach sinks as uint8 (H, W, C) numpy."""
    got = []

    class Keep:
        delivery = "inline"
        kinds = {"scalar", "image", "video", "histogram", "text"}

        def log_metrics(self, metrics, step):
            got.append(dict(metrics))

        def log_config(self, config):
            pass

        def close(self):
            pass

    logger = CompositeLogger({"keep": Keep()})
    logger.log_metrics({
        "chw": Image(torch.ones(3, 2, 5), dataformats="CHW"),
        "grey": Image(np.zeros((2, 5), np.uint8)),
        "frames": Video(np.ones((2, 3, 4), np.float32)),
        "h": Histogram(torch.tensor([[1.0, float("inf")], [2.0, 3.0]])),
    }, 0)  # fmt: skip
    logger.close()
    (row,) = got
    assert row["chw"].data.shape == (2, 5, 3) and row["chw"].data.dtype == np.uint8
    assert row["chw"].data.max() == 255
    assert row["grey"].data.shape == (2, 5, 1)
    assert row["frames"].frames.shape == (2, 3, 4, 1) and row["frames"].frames.max() == 255
    assert row["h"].values.tolist() == [1.0, 2.0, 3.0] and row["h"].nonfinite == 1
    assert row["h"].values.dtype == np.float64


def test_a_video_that_travels_as_its_gif_decodes_to_its_frames():
    """encoded_video (how a recorded video comes back from its process): shape known
    without decoding; frames decoded from the GIF on first use, repeats expanded again,
    exact for frames of at most 256 colours; through the composite it stays encoded."""
    from rl_training.experiment.media import encoded_video, gif_bytes

    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (7, 3), dtype=np.uint8)
    frames = palette[rng.integers(0, 7, (6, 5, 4))]  # (T, H, W, 3)
    frames[2] = frames[1]  # merged by Pillow into one longer frame
    video = encoded_video(gif_bytes(frames, 25), frames.shape, 25)
    assert video.shape == (6, 5, 4, 3) and video._frames is None
    got = []

    class Keep:
        kinds = ("video",)

        def log_metrics(self, metrics, step):
            got.append(metrics["v"])

        def log_config(self, config):
            pass

        def close(self):
            pass

    logger = CompositeLogger({"keep": Keep()})
    logger.log_metrics({"v": video}, 3)
    logger.close()
    assert got[0] is video and video._frames is None  # nothing decoded on the way
    assert np.array_equal(video.frames, frames)


def test_a_sink_without_kinds_gets_scalars_only_with_one_warning_per_kind(tmp_path):
    """A sink that declares no kinds (every sink written before media) gets the scalars
    of a mixed call, and one SinkKindWarning per kind per run; a media-only call skips it."""
    got = []

    class Old:
        delivery = "inline"

        def log_metrics(self, metrics, step):
            got.append((step, dict(metrics)))

        def log_config(self, config):
            pass

        def close(self):
            pass

    logger = CompositeLogger({"old": Old()})
    with pytest.warns(SinkKindWarning) as warned:
        for step in range(3):
            logger.log_metrics({"x": 1.0, "i": Image(np.zeros((2, 2), np.uint8)),
                                "t": Text("a")}, step)  # fmt: skip
        logger.log_metrics({"i": Image(np.zeros((2, 2), np.uint8))}, 9)
    logger.close()
    assert sorted(str(w.message).split(" does not take ")[1].split(" ")[0] for w in warned) == [
        "image", "text"]  # fmt: skip
    assert got == [(0, {"x": 1.0}), (1, {"x": 1.0}), (2, {"x": 1.0})]


def test_an_unknown_kind_is_refused():
    """kinds must be a set of the known kinds."""

    class Odd:
        kinds = {"scalar", "audio"}

        def log_metrics(self, metrics, step):
            pass

        def log_config(self, config):
            pass

        def close(self):
            pass

    with pytest.raises(ValueError, match="'odd' declares kinds = .*'audio'.*accepted"):
        CompositeLogger({"odd": Odd()})


def test_no_key_makes_a_path_outside_media():
    """'..', '.', empty parts and odd characters become '_' in media folders."""
    assert media_segments("../../etc/passwd") == ["_", "_", "etc", "passwd"]
    assert media_segments("a//./b c") == ["a", "_", "_", "b_c"]
    assert media_segments("eval/video") == ["eval", "video"]


def test_resume_drops_media_after_the_resume_step(tmp_path):
    """Reopened with resume_step S, both sinks drop non-scalar values after S: lines of
    media.jsonl and their files, and TensorBoard's reader shows none after S."""
    context = create_run_context(tiny_config(output_dir=tmp_path, log_sinks=SINKS))
    sinks = {"json": JsonlSink(context), "tensorboard": TensorBoardSink(context)}
    logger = CompositeLogger(sinks)
    for step in (0, 10, 20):
        logger.log_metrics({"i": Image(np.full((2, 2), step, np.uint8)), "h": Histogram(
            np.arange(3.0) + step)}, step)  # fmt: skip
    logger.close("interrupted")
    dropped = [x["path"] for x in media_lines(context.run_dir) if x["step"] > 10 and "path" in x]
    resumed = dataclasses.replace(context, resume_step=10)
    logger = CompositeLogger({"json": JsonlSink(resumed), "tensorboard": TensorBoardSink(resumed)})
    logger.log_metrics({"i": Image(np.full((2, 2), 99, np.uint8))}, 30)
    logger.close()
    lines = media_lines(context.run_dir)
    assert [(x["key"], x["step"]) for x in lines] == [("i", 0), ("h", 0), ("i", 10), ("h", 10),
                                                     ("i", 30)]  # fmt: skip
    assert dropped and not any((context.run_dir / path).exists() for path in dropped)
    assert all((context.run_dir / x["path"]).exists() for x in lines if "path" in x)
    acc = accumulator(context.run_dir)
    assert [e.step for e in acc.Tensors("i")] == [0, 10, 30]
    assert [e.step for e in acc.Tensors("h")] == [0, 10]


def test_media_jsonl_is_strict_json_with_non_finite_free_histograms(tmp_path):
    """A histogram of only non-finite values still makes a strict line."""
    with create_training_run(tiny_config(output_dir=tmp_path, log_sinks=SINKS)) as run:
        run.logger.log_metrics({"h": Histogram(np.array([np.nan, np.inf]))}, 0)
    (line,) = media_lines(run.run_dir)
    assert line["nonfinite"] == 2 and sum(line["counts"]) == 0
    json.dumps(line, allow_nan=False)


def test_tensorboards_own_server_shows_every_kind(tmp_path):
    """A live `tensorboard` server: the image and the video (animated GIF) in the Images
    tab, the histogram in the Histograms tab, the text in the Text tab, each at its step
    and decodable as served."""
    from urllib.parse import quote

    from rl_training.testing import TensorBoardServer

    with create_training_run(tiny_config(output_dir=tmp_path / "runs", log_sinks=SINKS)) as run:
        log_every_kind(run, step=5)
    server = TensorBoardServer(tmp_path / "runs")
    try:
        name = server.wait_for_tags("images", {"eval/frame", "eval/video"})
        served = {}
        for tag in ("eval/frame", "eval/video"):
            (sample,) = server.get(f"/data/plugin/images/images?run={quote(name)}&tag="
                                   f"{quote(tag)}&sample=0")  # fmt: skip
            assert sample["step"] == 5
            served[tag] = decode(server.raw(f"/data/plugin/images/individualImage?"
                                            f"{sample['query']}"))  # fmt: skip
        assert served["eval/frame"].format == "PNG" and served["eval/frame"].size == (24, 16)
        assert served["eval/video"].format == "GIF" and served["eval/video"].n_frames == 7
        server.wait_for_tags("histograms", {"weights/w"})
        ((_, step, buckets),) = server.get(f"/data/plugin/histograms/histograms?run="
                                           f"{quote(name)}&tag={quote('weights/w')}")  # fmt: skip
        assert step == 5 and sum(count for _, _, count in buckets) == 4
        server.wait_for_tags("text", {"notes"})
        (text,) = server.get(f"/data/plugin/text/text?run={quote(name)}&tag=notes")
        assert text["step"] == 5 and "<strong>bold</strong>" in text["text"]
    finally:
        server.close()
