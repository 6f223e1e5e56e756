"""Values beyond scalars: :class:`Image`, :class:`Video`, :class:`Histogram`, :class:`Text`.

They go through ``log_metrics`` beside scalars, in one call::

    logger.log_metrics({"loss": 0.1, "eval/frame": Image(frame),
                        "eval/video": Video(frames, fps=50)}, step)

The composite checks and normalises them with everything else (a bad value raises
``TypeError``/``ValueError`` naming the key and what is accepted, and the call
writes nothing anywhere) and hands sinks the same classes, normalised: an image's
``data`` as ``uint8`` numpy (H, W, C), a video's ``frames`` as ``uint8`` numpy
(T, H, W, C), a histogram's ``values`` as the finite values, 1-D ``float64``
numpy, with ``nonfinite`` counting what was left out, a text's ``text`` as ``str``.
Every value has a ``kind``; a sink lists the kinds it takes in ``kinds``
(:data:`KINDS`; scalars only when it declares none).

Encoders the sinks share: :func:`encoded` (PNG or GIF, once per value, through
:func:`png_bytes` and :func:`gif_bytes`, Pillow) and :func:`histogram_counts`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

KINDS: tuple[str, ...] = ("scalar", "image", "video", "histogram", "text")
"""Every kind of value, as sinks name them in ``kinds``."""

DATAFORMATS = ("HWC", "CHW")
_CHANNELS = (1, 3, 4)
_M = TypeVar("_M", bound="Media")


class Media:
    """What the four value types share: a ``kind``, and a check that turns the value
    into its normalised form (see the module docstring)."""

    kind: str = ""
    __slots__ = ()

    def _arrays(self) -> list[Any]:
        """The array-like fields, for the host transfer (torch tensors gathered)."""
        return []

    def _normalized(self, key: str, arrays: list[Any]) -> Media:  # pragma: no cover
        raise NotImplementedError


class Image(Media):
    """One picture: (H, W) or (H, W, C) with C in 1, 3, 4 (``dataformats="CHW"``:
    (C, H, W)); ``uint8``, or float in [0, 1]; numpy or torch (any device)."""

    kind = "image"
    __slots__ = ("_encoded", "caption", "data", "dataformats")
    _encoded: bytes

    def __init__(self, data: Any, *, caption: str | None = None, dataformats: str = "HWC") -> None:
        self.data, self.caption, self.dataformats = data, caption, dataformats

    def _arrays(self) -> list[Any]:
        return [self.data]

    def _normalized(self, key: str, arrays: list[Any]) -> Image:
        if self.dataformats not in DATAFORMATS:
            raise ValueError(
                f"metric {key!r}: Image dataformats {self.dataformats!r} is not one of "
                f"{', '.join(map(repr, DATAFORMATS))}"
            )
        _check_caption(key, self.caption)
        data = arrays[0]
        if data.ndim == 3 and self.dataformats == "CHW":
            data = np.moveaxis(data, 0, -1)
        if data.ndim == 2:
            data = data[:, :, None]
        if data.ndim != 3 or data.shape[2] not in _CHANNELS or 0 in data.shape:
            raise ValueError(
                f"metric {key!r}: an Image of shape {tuple(arrays[0].shape)} "
                f"(dataformats {self.dataformats!r}); accepted: (H, W), (H, W, C) or with "
                "dataformats='CHW' (C, H, W), C in 1, 3, 4, H and W at least 1"
            )
        return _raw(Image, data=_to_uint8(key, "Image", data), caption=self.caption,
                    dataformats="HWC")  # fmt: skip

    def __repr__(self) -> str:
        return f"Image(shape={getattr(self.data, 'shape', '?')}, caption={self.caption!r})"


class Video(Media):
    """Frames (T, H, W) or (T, H, W, C), C in 1, 3, 4, T at least 1; ``uint8``, or
    float in [0, 1]; shown at ``fps`` frames per second.

    A video recorded by a trainer (``--video-every``) arrives encoded: its ``frames``
    are decoded from its GIF on first use (``shape`` needs no decoding)."""

    kind = "video"
    __slots__ = ("_encoded", "_frames", "_shape", "caption", "fps")
    _encoded: bytes
    _frames: Any
    _shape: tuple[int, ...] | None

    def __init__(self, frames: Any, *, fps: float = 30, caption: str | None = None) -> None:
        self.frames, self.fps, self.caption = frames, fps, caption

    @property
    def frames(self) -> Any:
        """The frames; normalised: ``uint8`` numpy (T, H, W, C)."""
        if self._frames is None:
            self._frames = _gif_frames(self._encoded, self._shape, self.fps)
        return self._frames

    @frames.setter
    def frames(self, frames: Any) -> None:
        self._frames, self._shape = frames, None

    @property
    def shape(self) -> tuple[int, ...]:
        """``frames.shape``: (T, H, W, C) once normalised."""
        if self._shape is not None:
            return self._shape
        return tuple(self.frames.shape)

    def _arrays(self) -> list[Any]:
        return [] if self._frames is None else [self._frames]

    def _normalized(self, key: str, arrays: list[Any]) -> Video:
        fps = self.fps
        if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
            raise TypeError(f"metric {key!r}: Video fps {fps!r} is not a number")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"metric {key!r}: Video fps {fps!r}; accepted: a positive number")
        _check_caption(key, self.caption)
        frames = arrays[0]
        if frames.ndim == 3:
            frames = frames[..., None]
        if frames.ndim != 4 or frames.shape[3] not in _CHANNELS or 0 in frames.shape:
            raise ValueError(
                f"metric {key!r}: a Video of shape {tuple(arrays[0].shape)}; accepted: "
                "(T, H, W) or (T, H, W, C), C in 1, 3, 4, T, H and W at least 1"
            )
        return _raw(Video, frames=_to_uint8(key, "Video", frames), fps=float(fps),
                    caption=self.caption)  # fmt: skip

    def __repr__(self) -> str:
        shape = self._shape if self._frames is None else getattr(self._frames, "shape", "?")
        return f"Video(shape={shape}, fps={self.fps!r})"


class Histogram(Media):
    """The distribution of real numbers of any shape, in ``bins`` bins; non-finite
    values are left out and counted (``nonfinite``)."""

    kind = "histogram"
    __slots__ = ("bins", "nonfinite", "values")

    def __init__(self, values: Any, *, bins: int = 64) -> None:
        self.values, self.bins, self.nonfinite = values, bins, 0

    def _arrays(self) -> list[Any]:
        return [self.values]

    def _normalized(self, key: str, arrays: list[Any]) -> Histogram:
        bins = self.bins
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"metric {key!r}: Histogram bins {bins!r}; accepted: an int >= 1")
        values = arrays[0]
        if values.dtype.kind not in "biuf":
            raise TypeError(
                f"metric {key!r}: Histogram of {values.dtype} values; accepted: real numbers"
            )
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = flat[np.isfinite(flat)]
        out = _raw(Histogram, values=finite, bins=int(bins))
        out.nonfinite = int(flat.size - finite.size)
        return out

    def __repr__(self) -> str:
        return f"Histogram(size={getattr(self.values, 'size', '?')}, bins={self.bins!r})"


class Text(Media):
    """A string (Markdown in TensorBoard's Text tab)."""

    kind = "text"
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def _normalized(self, key: str, arrays: list[Any]) -> Text:
        if not isinstance(self.text, str):
            raise TypeError(f"metric {key!r}: Text of {type(self.text).__name__}; accepted: a str")
        try:
            self.text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"metric {key!r}: Text is not encodable as UTF-8") from error
        return _raw(Text, text=str(self.text))

    def __repr__(self) -> str:
        return f"Text({self.text!r:.60})"


def normalize_media(items: Sequence[tuple[str, Media]]) -> dict[str, Media]:
    """Check and normalise every media value of one call (``(key, value)`` pairs).

    Torch tensors are detached and copied to the host once per device and dtype for
    the whole call.

    Raises:
        TypeError: a value's array is not numpy or torch, or of a wrong dtype.
        ValueError: a wrong shape, range or parameter (the key is named).
    """
    arrays = _to_host([(key, array) for key, value in items for array in value._arrays()])
    out: dict[str, Media] = {}
    position = 0
    for key, value in items:
        count = len(value._arrays())
        if getattr(value, "_encoded", None) is not None:  # normalised and encoded already
            out[key] = value
        else:
            out[key] = value._normalized(key, arrays[position : position + count])
        position += count
    return out


# -- encoders the sinks share ---------------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    """A normalised image (``uint8`` (H, W, C)) as PNG."""
    pil = _pil_image()
    buffer = io.BytesIO()
    pil.fromarray(_for_pil(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Normalised frames (``uint8`` (T, H, W, C)) as an animated GIF that loops, as
    ``SummaryWriter.add_video`` writes for TensorBoard. GIF keeps 256 colours per
    frame (Pillow's fast octree, no dithering: about 0.3 ms a 64x64 frame, 17x its
    default) and delays in hundredths of a second (frames repeated exactly are
    merged into one longer frame by Pillow)."""
    return gif_file([gif_frame(frame) for frame in frames], fps)


def gif_frame(frame: np.ndarray) -> Any:
    """One normalised frame (``uint8`` (H, W, C)) as a palette image for
    :func:`gif_file` (Pillow releases the GIL while it quantises: frames can be
    quantised on other threads while more are made)."""
    pil = _pil_image()
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[..., :3]
    return pil.fromarray(np.ascontiguousarray(frame)).quantize(
        256, method=pil.Quantize.FASTOCTREE, dither=pil.Dither.NONE
    )


def gif_file(images: Sequence[Any], fps: float) -> bytes:
    """The animated GIF of :func:`gif_frame` images, looping, at ``fps``."""
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=list(images[1:]),
                   duration=_gif_duration(fps), loop=0, optimize=False)  # fmt: skip
    return buffer.getvalue()


def encoded_video(gif: bytes, shape: tuple[int, ...], fps: float,
                  caption: str | None = None) -> Video:  # fmt: skip
    """A normalised :class:`Video` from its GIF (:func:`gif_file`) and the shape of the
    frames it was made of, without the frames (decoded from the GIF if asked for):
    how a video recorded in another process travels."""
    video = _raw(Video, frames=None, fps=float(fps), caption=caption)
    video._shape, video._encoded = tuple(shape), gif
    return video


def encoded(value: Image | Video) -> bytes:
    """A normalised image as PNG, or video as GIF, encoded once per value however many
    sinks ask for it (the json and tensorboard sinks share one encoding per call)."""
    cached: bytes | None = getattr(value, "_encoded", None)
    if cached is None:
        if isinstance(value, Image):
            cached = png_bytes(value.data)
        else:
            cached = gif_bytes(value.frames, value.fps)
        value._encoded = cached
    return cached


def histogram_counts(histogram: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, counts)`` of a normalised histogram: ``bins + 1`` edges, ``bins``
    counts (numpy's bins; one bin around the value when all values are equal)."""
    values = histogram.values
    if values.size == 0:
        return np.array([0.0, 0.0]), np.array([0], dtype=np.int64)
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=histogram.bins, range=(low, high))
    return edges, counts.astype(np.int64)


# -- internals ------------------------------------------------------------------------------


def _raw(cls: type[_M], **fields: Any) -> _M:
    """An instance of ``cls`` with ``fields`` set, past ``__init__`` (normalised)."""
    value = object.__new__(cls)
    for name, field in fields.items():
        setattr(value, name, field)
    if isinstance(value, Histogram):
        value.nonfinite = 0
    return value


def _check_caption(key: str, caption: object) -> None:
    if caption is not None and not isinstance(caption, str):
        raise TypeError(f"metric {key!r}: caption {caption!r} is not a str or None")


def _to_uint8(key: str, what: str, data: np.ndarray) -> np.ndarray:
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data)
    if data.dtype.kind != "f":
        raise TypeError(
            f"metric {key!r}: {what} of dtype {data.dtype}; accepted: uint8, or float in [0, 1]"
        )
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):  # NaN fails both
        raise ValueError(
            f"metric {key!r}: {what} of floats from {low:g} to {high:g}; accepted: floats in "
            "[0, 1] (or uint8)"
        )
    return np.ascontiguousarray(np.rint(data.astype(np.float32) * 255.0).astype(np.uint8))


def _to_host(pairs: list[tuple[str, Any]]) -> list[np.ndarray]:
    """Every array as numpy; tensors copied per (device, dtype) in one transfer."""
    import sys

    torch = sys.modules.get("torch")
    out: list[Any] = [None] * len(pairs)
    groups: dict[Any, list[int]] = {}
    for index, (key, array) in enumerate(pairs):
        if torch is not None and isinstance(array, torch.Tensor):
            if array.is_complex():
                raise TypeError(f"metric {key!r}: complex values are not accepted")
            groups.setdefault((array.device, array.dtype), []).append(index)
        elif isinstance(array, np.ndarray):
            out[index] = array
        else:
            raise TypeError(
                f"metric {key!r}: {type(array).__name__} is not an array; accepted: a numpy "
                "array or a torch tensor"
            )
    for indices in groups.values():
        tensors = [pairs[i][1].detach() for i in indices]
        if tensors[0].is_cpu:
            hosted = [t.numpy(force=True) for t in tensors]
        else:  # one copy to the host for all of them
            import torch as torch_module

            flat = torch_module.cat([t.reshape(-1) for t in tensors]).cpu().numpy()
            hosted, start = [], 0
            for t in tensors:
                hosted.append(flat[start : start + t.numel()].reshape(tuple(t.shape)))
                start += t.numel()
        for i, array in zip(indices, hosted, strict=True):
            out[i] = array
    for index, array in enumerate(out):
        if array.dtype == np.bool_ or array.dtype.kind in "OSUVc":
            raise TypeError(
                f"metric {pairs[index][0]!r}: values of dtype {array.dtype}; accepted: real "
                "numbers (uint8, or float in [0, 1], for images and videos)"
            )
    return out


def _gif_duration(fps: float) -> int:
    return max(20, round(1000 / fps / 10) * 10)  # GIF stores 10 ms units; 20 ms floor


def _gif_frames(gif: bytes, shape: tuple[int, ...] | None, fps: float) -> np.ndarray:
    """The frames of a GIF written by :func:`gif_file`, as ``uint8`` (T, H, W, C) of
    ``shape`` (merged repeats expanded again; colours as the GIF keeps them)."""
    assert shape is not None
    pil = _pil_image()
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[shape[3]]
    with pil.open(io.BytesIO(gif)) as image:
        unit = _gif_duration(fps)
        frames, repeats = [], []
        for index in range(image.n_frames):
            image.seek(index)
            frame = np.asarray(image.convert(mode))
            frames.append(frame[..., None] if frame.ndim == 2 else frame)
            repeats.append(max(1, round((image.info.get("duration", unit) or unit) / unit)))
    out = np.repeat(np.stack(frames), repeats, axis=0)[: shape[0]]
    if len(out) < shape[0]:  # pad with the last frame (a GIF's last delay may be merged)
        out = np.concatenate([out, np.repeat(out[-1:], shape[0] - len(out), axis=0)])
    return np.ascontiguousarray(out)


def _for_pil(image: np.ndarray) -> np.ndarray:
    return image[:, :, 0] if image.shape[2] == 1 else image


def _pil_image() -> Any:
    try:
        from PIL import Image as PILImage
    except ImportError as error:  # a dependency; only a broken install lacks it
        raise ImportError(
            "images and videos are encoded with Pillow: pip install pillow"
        ) from error
    return PILImage


__all__ = [
    "KINDS",
    "Histogram",
    "Image",
    "Media",
    "Text",
    "Video",
    "encoded",
    "encoded_video",
    "gif_bytes",
    "gif_file",
    "gif_frame",
    "histogram_counts",
    "normalize_media",
    "png_bytes",
]
