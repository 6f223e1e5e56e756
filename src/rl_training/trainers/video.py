"""``--video-every``: videos of the agent, recorded in a process of their own.

:class:`PeriodicVideo` plays one deterministic episode of the current policy on a
separate env made with ``render_mode="rgb_array"`` and logs it as ``eval/video``.
Rendering and encoding a 500-frame 600x400 CartPole episode takes about 2 s of CPU,
most of it under the GIL (pygame draws holding it): on a thread of the training
process it slowed training by a quarter. So the recording runs in a child process
(``python -m rl_training.trainers.video``, started once per run, before training):
the training thread sends it the weights (CPU copies) and gets back the GIF, which
every sink shares (:func:`~rl_training.experiment.media.encoded_video`). In the child,
frames are quantised for the GIF on a second thread while the next ones are
rendered (Pillow releases the GIL while it quantises).

An env or trainer the child cannot import by name (defined in ``__main__`` or in a
function) is recorded on a thread of the training process instead, the same way.

The child talks over its stdin/stdout: length-prefixed pickles, its own files. It
ignores Ctrl-C (it is in a session of its own) and ends when its stdin closes, so a
killed run leaves no recorder behind.
"""

from __future__ import annotations

import contextlib
import pickle
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import IO, Any

import gymnasium as gym
import numpy as np
import torch

from rl_training.experiment.logging import Logger
from rl_training.experiment.media import (
    Video,
    encoded_video,
    gif_file,
    gif_frame,
    normalize_media,
)
from rl_training.runtime.environments import is_atari, make_env
from rl_training.runtime.plan import Plan
from rl_training.trainers.checkpoint import SavedModel
from rl_training.trainers.evaluation import current_saved, saved_policy
from rl_training.trainers.observations import batch_of_one
from rl_training.trainers.session import Policy, Trainer, TrainerClass

VIDEO_SEED_OFFSET = 2_000_003
"""The video env's seed is the run's seed plus this."""

_HEADER = struct.Struct("!Q")


class PeriodicVideo:
    """``--video-every``: one deterministic episode of the current policy on a separate
    env made with ``render_mode="rgb_array"``, logged as ``eval/video`` (at most
    ``video_length`` frames, at the env's ``render_fps``, 30 if it names none).

    Recorded in a child process (see the module docstring) with a CPU copy of the
    weights of the step it was asked at. Finished videos are logged, at the step they
    were asked at and in that order, by the training thread at the next call and at
    :meth:`finish`.
    """

    def __init__(
        self, plan: Plan, trainer_cls: TrainerClass, trainer: Trainer, logger: Logger
    ) -> None:
        self._plan, self._trainer, self._logger = plan, trainer, logger
        self._trainer_cls = trainer_cls
        env_id = plan.config.env_id
        with make_env(env_id, render_mode="rgb_array", training=False) as probe:
            # the registered env, made by name where it is recorded (an Atari game: by
            # its id, with the preprocessing)
            env_spec = probe.unwrapped.spec if is_atari(env_id) else probe.spec
            self._fps = float(probe.metadata.get("render_fps") or 30)
        self._seed = plan.config.seed + VIDEO_SEED_OFFSET
        setup = {"env": env_spec, "atari": env_id if is_atari(env_id) else None,
                 "trainer": plan.spec.trainer,
                 "length": plan.config.video_length, "seed": self._seed,
                 "fps": self._fps}  # fmt: skip
        self._pending: list[tuple[int, Future[Video]]] = []
        self._recorder: _Recorder = (
            _ProcessRecorder(setup) if _importable(env_spec, plan.spec.trainer)
            else _ThreadRecorder(setup, trainer_cls)
        )  # fmt: skip

    def __call__(self, step: int) -> None:
        """Log the videos finished so far; start recording one for ``step``."""
        self._log_finished()
        saved = current_saved(self._plan, self._trainer)
        self._pending.append((step, self._recorder.record(saved)))

    def finish(self, timeout: float = 600.0) -> None:
        """Wait (at most ``timeout`` s in all) for the videos under way and log them."""
        self._log_finished(deadline=time.monotonic() + timeout)

    def close(self) -> None:
        """Drop the videos not logged yet (a recording under way is stopped); end the
        recorder and close its env."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._recorder.close()

    def _log_finished(self, deadline: float | None = None) -> None:
        from concurrent.futures import TimeoutError as FutureTimeout

        while self._pending:
            step, future = self._pending[0]
            if deadline is None and not future.done():
                return
            try:
                video = future.result(timeout=None if deadline is None else
                                      max(0.0, deadline - time.monotonic()))  # fmt: skip
            except FutureTimeout:
                return
            self._pending.pop(0)
            self._logger.log_metrics({"eval/video": video}, step)


def record_episode(
    env: gym.Env[Any, Any],
    act: Policy,
    *,
    seed: int,
    generator: torch.Generator,
    length: int,
    fps: float,
    stop: Callable[[], bool] = lambda: False,
) -> Video:
    """Play one deterministic episode of ``act`` on ``env`` from ``reset(seed=seed)``,
    at most ``length`` frames; the video, normalised and encoded (GIF).

    Frames are quantised for the GIF on a second thread while the next are rendered.

    Raises:
        ValueError: a frame is not an image, or not of the first frame's shape.
        CancelledError: ``stop()`` turned true.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rl-training gif") as quantize:
        obs, _ = env.reset(seed=seed)
        first = _frame(env.render(), fps)
        images = [quantize.submit(gif_frame, first)]
        while len(images) < length:
            if stop():  # the run is ending without it
                for image in images:
                    image.cancel()
                raise CancelledError
            with torch.inference_mode():
                action = act(batch_of_one(obs), True, generator)[0]
            obs, _, terminated, truncated, _ = env.step(action)
            frame = _frame(env.render(), fps)
            if frame.shape != first.shape:
                raise ValueError(
                    f"eval/video: the env rendered a frame of shape {frame.shape} after "
                    f"frames of shape {first.shape}; accepted: frames of one shape"
                )
            images.append(quantize.submit(gif_frame, frame))
            if terminated or truncated:
                break
        gif = gif_file([image.result() for image in images], fps)
    return encoded_video(gif, (len(images), *first.shape), fps)


def _frame(rendered: Any, fps: float) -> np.ndarray:
    """One rendered frame, normalised (``uint8`` (H, W, C)) by the composite's rules."""
    frames = np.asarray(rendered)[None]
    video = normalize_media([("eval/video", Video(frames, fps=fps))])["eval/video"]
    return video.frames[0]  # type: ignore[attr-defined, no-any-return]  # a Video


def _importable(env_spec: Any, trainer: str) -> bool:
    """Whether a child process can make the env and the trainer by name."""
    if trainer.partition(":")[0] == "__main__":
        return False
    entry = env_spec.entry_point
    if callable(entry):
        module = getattr(entry, "__module__", "__main__")
        if module == "__main__" or "<locals>" in getattr(entry, "__qualname__", "<locals>"):
            return False
    elif isinstance(entry, str) and entry.startswith("__main__:"):
        return False
    try:
        pickle.dumps(env_spec)
    except Exception:  # noqa: BLE001  # whatever the env's kwargs hold
        return False
    return True


class _Recorder:
    def record(self, saved: SavedModel) -> Future[Video]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError


def _make(setup: dict[str, Any]) -> gym.Env:
    """The env a recorder plays, rendering ``rgb_array`` frames."""
    if setup.get("atari"):
        return make_env(setup["atari"], render_mode="rgb_array", training=False)
    return gym.make(setup["env"], render_mode="rgb_array")


class _ThreadRecorder(_Recorder):
    """Records on a thread of this process (an env or trainer a child cannot import)."""

    def __init__(self, setup: dict[str, Any], trainer_cls: TrainerClass) -> None:
        self._setup, self._trainer_cls = setup, trainer_cls
        self._env = _make(setup)
        self._generator = torch.Generator().manual_seed(setup["seed"])
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rl-training video")
        self._stop = threading.Event()

    def record(self, saved: SavedModel) -> Future[Video]:
        return self._worker.submit(self._record, saved)

    def _record(self, saved: SavedModel) -> Video:
        act = _policy(self._trainer_cls, saved)
        setup = self._setup
        return record_episode(self._env, act, seed=setup["seed"], generator=self._generator,
                              length=setup["length"], fps=setup["fps"],
                              stop=self._stop.is_set)  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._env.close()


class _ProcessRecorder(_Recorder):
    """Records in ``python -m rl_training.trainers.video``, one request at a time, in
    order; a reader thread turns its answers into the requests' results."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "rl_training.trainers.video"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            start_new_session=True,  # Ctrl-C is the training process's to handle
        )  # fmt: skip
        assert self._process.stdin is not None and self._process.stdout is not None
        self._requests: queue.Queue[Future[Video]] = queue.Queue()
        self._lock = threading.Lock()
        _write(self._process.stdin, list(sys.path))  # first: where to import the rest from
        _write(self._process.stdin, setup)
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), name="rl-training video",
            daemon=True,
        )  # fmt: skip
        self._reader.start()

    def record(self, saved: SavedModel) -> Future[Video]:
        future: Future[Video] = Future()
        with self._lock:
            self._requests.put(future)
            assert self._process.stdin is not None
            try:
                _write(self._process.stdin, saved)
            except (BrokenPipeError, OSError):
                pass  # the child is gone: the reader fails this request with its stderr
        return future

    def _read(self, stdout: IO[bytes]) -> None:
        while True:
            try:
                answer = _read(stdout)
            except Exception:  # noqa: BLE001  # a torn answer is the child's end
                answer = None
            if answer is None:
                break
            future = self._requests.get()
            if answer[0] == "video":
                _, gif, shape, fps = answer
                video = encoded_video(gif, shape, fps)
                if future.set_running_or_notify_cancel():
                    future.set_result(video)
            elif future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError(f"recording eval/video failed:\n{answer[1]}"))
        # The child ended: fail what is still asked for, with what it printed.
        error = RuntimeError(f"the video recorder ended (exit code {self._process.wait()})"
                             f"{self._stderr_tail()}")  # fmt: skip
        while True:
            try:
                future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
            if text:
                return ":\n" + text[-4000:]
        return ""

    def close(self) -> None:
        """End the child: at once if a recording is under way, else by closing its
        stdin; kill it if it has not ended within 5 s."""
        process = self._process
        busy = any(not f.done() for f in list(self._requests.queue))
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        if busy:
            process.kill()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()
        self._stderr.close()


def _policy(trainer_cls: TrainerClass, saved: SavedModel) -> Policy:
    return saved_policy(trainer_cls, saved, torch.device("cpu"))


def _write(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    """The next value, or ``None`` at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301  # our own parent or child, over a pipe


def _child() -> None:
    """The recorder process: a setup, then one video per request, until stdin ends."""
    import importlib

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # what the env prints must not reach the answers
    path = _read(stdin)
    if path is None:
        return
    sys.path[:] = path
    setup = _read(stdin)
    if setup is None:
        return
    torch.set_num_threads(1)
    module_name, _, class_name = setup["trainer"].partition(":")
    trainer_cls: TrainerClass = getattr(importlib.import_module(module_name), class_name)
    env = _make(setup)
    generator = torch.Generator().manual_seed(setup["seed"])
    while (saved := _read(stdin)) is not None:
        try:
            video = record_episode(env, _policy(trainer_cls, saved), seed=setup["seed"],
                                   generator=generator, length=setup["length"],
                                   fps=setup["fps"])  # fmt: skip
            answer: tuple[Any, ...] = ("video", video._encoded, video.shape, video.fps)
        except Exception:  # noqa: BLE001  # reported to the training process
            answer = ("error", traceback.format_exc())
        try:
            _write(stdout, answer)
        except BrokenPipeError:
            break
    env.close()


if __name__ == "__main__":
    _child()


__all__ = ["VIDEO_SEED_OFFSET", "PeriodicVideo", "record_episode"]
