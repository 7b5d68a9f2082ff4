"""What a segmentation run leaves for people and tools: overlay videos, mask PNGs, COCO RLE, a summary.

Every writer takes frames and per-object masks as propagation yields them (``masks`` maps an integer
object id to a boolean ``(H, W)`` array; integer 0/1 arrays are accepted too) and never leaves a
half-written file: PNGs and JSON go through :mod:`sam2long.mask_io`'s atomic writes, and a video is
encoded into a temporary file in its target folder (named like mask_io's, so
:func:`sam2long.mask_io.remove_temp_files` clears what a killed run left) and renamed on ``close()``.

Videos (:class:`OverlayVideoWriter`, :class:`SideBySideWriter`)
    H.264 (libx264, High profile, CRF 18) in an mp4 with the index up front (``+faststart``),
    ``yuv420p``, BT.709 limited range (tagged), at the input's fps: playable in a browser. Each
    object is drawn in its DAVIS palette colour (:func:`object_colour`, the colour palette PNGs give
    it) as a half-transparent fill, a contour inside the mask and its id on a label next to the mask.
    ``yuv420p`` needs even sizes and H.264 can only crop its 4:2:0 pictures by two pixels, so an odd
    height or width is padded by one row / column at the bottom / right (a copy of the last one): the
    video is then ``encoded_size`` = ``(H + H % 2, W + W % 2)``. Without libx264 in the installed PyAV
    the next encoder of :data:`VIDEO_ENCODERS` is used, with a warning when it is not H.264.

Masks (:class:`PalettePngWriter`, :class:`PerObjectPngWriter`, the two dataset layouts)
    ``<out_dir>/<frame_name>.png``: one palette PNG, label = object id (1..255; on overlap the
    smaller id wins; the DAVIS / MOSE / YouTube-VOS / LVOS layout). ``<out_dir>/<obj_id:03d>/<frame_name>.png``:
    one 0/1 palette PNG per object (the SA-V layout that ``sam2long-vos --per_obj_png_file`` reads
    and writes). The palette is DAVIS's unless one is given (``sam2long-vos`` keeps its inputs').

COCO RLE (:class:`CocoRleWriter`), one JSON file::

    {"height": H, "width": W,
     "frames": [{"frame_idx": 0, "frame_name": "00000",
                 "objects": [{"obj_id": 1,
                              "rle": {"size": [H, W], "counts": "<COCO compressed RLE>"},
                              "area": 1234,                 # pixels, pycocotools.mask.area
                              "bbox": [x, y, w, h]}]}]}     # floats, pycocotools.mask.toBbox

    Frames are sorted by ``frame_idx`` (a frame written again replaces its earlier entry), objects by
    id; an empty mask is kept, with area 0 and bbox ``[0, 0, 0, 0]``. ``counts`` decodes with
    ``pycocotools.mask.decode({"size": ..., "counts": counts.encode()})``.

Run summary: :func:`write_summary`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import cv2
import numpy as np

from sam2long.mask_io import (
    DAVIS_PALETTE,
    Palette,
    PathLike,
    atomic_write_json,
    merge_objects,
    temp_path,
    write_png,
)

Masks = Mapping[int, np.ndarray]
Size = tuple[int, int]

# Video encoders, in order of preference: the first one the installed PyAV has is used.
VIDEO_ENCODERS = ("libx264", "libopenh264", "h264", "mpeg4")
H264_ENCODERS = frozenset({"libx264", "libopenh264", "h264"})
FILL_ALPHA = 0.5
_X264_OPTIONS = {"crf": "18", "preset": "fast"}
_BT709 = 1  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC_BT709
_MPEG_RANGE = 1  # AVCOL_RANGE_MPEG: limited (TV) range
_GAP_GREY = 32
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _require(module: str, package: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or say which package to install for what."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs {package!r}: pip install {package}") from error


# --------------------------------------------------------------------------- input checks


def _check_size(size: Any, name: str = "size") -> Size:
    """``(height, width)`` as two positive ints, or ValueError naming the option."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return height, width


def _check_frame(frame: Any, size: Size) -> np.ndarray:
    """An RGB uint8 frame of ``size``, or ValueError."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != (*size, 3):
        raise ValueError(
            f"expected an RGB uint8 frame of shape {(*size, 3)}, got {frame.dtype} {frame.shape}"
        )
    return frame


def _check_masks(masks: Masks, size: Size) -> dict[int, np.ndarray]:
    """Boolean ``size`` masks keyed by int id (leading singleton axes dropped), in id order."""
    checked = {}
    for obj_id, mask in masks.items():
        if isinstance(obj_id, (bool, np.bool_)) or not isinstance(obj_id, (int, np.integer)):
            raise ValueError(f"object ids must be integers, got {obj_id!r}")
        mask = np.asarray(mask)
        while mask.ndim > 2 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.shape != size:
            raise ValueError(f"mask of object {obj_id} has shape {mask.shape}, expected {size}")
        if mask.dtype != np.bool_:
            if not np.issubdtype(mask.dtype, np.integer):
                raise ValueError(
                    f"mask of object {obj_id} is {mask.dtype}; expected bool (threshold logits first: logits > 0)"
                )
            mask = mask != 0
        checked[int(obj_id)] = mask
    return dict(sorted(checked.items()))


def _check_frame_name(frame_name: Any) -> str:
    """A frame name usable as a file name (no folders), or ValueError."""
    name = str(frame_name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"frame name {frame_name!r} is not a plain file name")
    return name


# --------------------------------------------------------------------------- drawing


def object_colour(obj_id: int) -> tuple[int, int, int]:
    """RGB colour of an object: DAVIS palette entry ``obj_id`` for ids 1..255, so overlays match
    palette PNGs; other ids (0, negative, > 255) cycle through entries 1..255 (never black)."""
    index = obj_id if 0 < obj_id < 256 else (obj_id - 1) % 255 + 1
    red, green, blue = DAVIS_PALETTE[3 * index : 3 * index + 3]
    return red, green, blue


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """White on dark backgrounds, black on light ones."""
    red, green, blue = background
    return (255, 255, 255) if 0.299 * red + 0.587 * green + 0.114 * blue < 140 else (0, 0, 0)


def _text_style(height: int, width: int) -> tuple[float, int]:
    """Font scale and stroke that stay legible from small to 4K frames."""
    scale = max(0.4, min(height, width) / 540)
    return scale, max(1, round(scale * 1.5))


def _draw_label(
    image: np.ndarray, text: str, x: int, y: int, background: tuple[int, int, int], *, above: bool
) -> None:
    """Draw ``text`` on a filled box whose top-left corner is ``(x, y)`` (its bottom-left when
    ``above``), moved inside the image."""
    height, width = image.shape[:2]
    scale, stroke = _text_style(height, width)
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, stroke)
    pad = max(2, stroke)
    box_w, box_h = text_w + 2 * pad, text_h + baseline + 2 * pad
    top = y - box_h if above and y - box_h >= 0 else y
    top = min(max(top, 0), max(height - box_h, 0))
    left = min(max(x, 0), max(width - box_w, 0))
    cv2.rectangle(image, (left, top), (left + box_w - 1, top + box_h - 1), background, thickness=cv2.FILLED)
    cv2.putText(
        image,
        text,
        (left + pad, top + pad + text_h),
        _FONT,
        scale,
        _text_colour(background),
        stroke,
        cv2.LINE_AA,
    )


def draw_overlay(
    frame_rgb: np.ndarray,
    masks: Masks,
    *,
    labels: bool = True,
    contours: bool = True,
    alpha: float = FILL_ALPHA,
) -> np.ndarray:
    """A copy of ``frame_rgb`` with every object filled in its colour at opacity ``alpha``, outlined
    by a contour inside its mask and labelled with its id on a box at its top-left corner.

    Only mask pixels and label boxes change, so the background stays as it was. Objects are
    painted in id order (a larger id is drawn over a smaller one); labels come last, on top.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    frame = np.asarray(frame_rgb)
    size = frame.shape[:2]
    frame = _check_frame(frame, size)
    masks = _check_masks(masks, size)
    out = frame.copy()
    for obj_id, mask in masks.items():
        colour = np.array(object_colour(obj_id), dtype=np.float32)
        region = out[mask].astype(np.float32)
        out[mask] = np.rint((1.0 - alpha) * region + alpha * colour).astype(np.uint8)
    if contours:
        thickness = 2 * max(2, round(min(size) / 135))  # half of the stroke lies inside the mask
        for obj_id, mask in masks.items():
            mask_u8 = mask.astype(np.uint8)
            outlines, _ = cv2.findContours(mask_u8, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            band = np.zeros_like(mask_u8)
            cv2.drawContours(band, outlines, -1, 1, thickness)
            out[(band != 0) & mask] = object_colour(obj_id)
    if labels:
        for obj_id, mask in masks.items():
            if mask.any():
                x, y, _, _ = cv2.boundingRect(mask.astype(np.uint8))
                _draw_label(out, str(obj_id), x, y, object_colour(obj_id), above=True)
    return out


# --------------------------------------------------------------------------- mp4 encoding


def _video_encoder(av: ModuleType) -> str:
    """The first encoder of :data:`VIDEO_ENCODERS` the installed PyAV has (warns if not H.264)."""
    for name in VIDEO_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # av's UnknownCodecError
            continue
        if name not in H264_ENCODERS:
            warnings.warn(
                f"this PyAV build has no H.264 encoder; writing {name} in the mp4, which browsers may not play",
                RuntimeWarning,
                stacklevel=4,
            )
        return name
    raise RuntimeError(f"this PyAV build has none of the video encoders {', '.join(VIDEO_ENCODERS)}")


def _frame_rate(fps: Any) -> Fraction:
    """``fps`` as a Fraction (floats snapped to a denominator <= 1001: 29.97002997 -> 30000/1001)."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.integer, np.floating)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(fps, Fraction):
        return fps
    return Fraction(float(fps)).limit_denominator(1001)


class _Mp4Encoder:
    """Encodes RGB frames of one size into ``path`` via a temporary file renamed on :meth:`close`."""

    def __init__(self, path: PathLike, fps: Any, size: Size) -> None:
        av = _require("av", "av", "writing mp4 videos")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"video path {self.path} must end in .mp4")
        self.fps = _frame_rate(fps)
        self.size = size
        self.encoded_size = (size[0] + size[0] % 2, size[1] + size[1] % 2)
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temp_path = temp_path(self.path)
        os.close(os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            self._container = av.open(
                str(self.temp_path), mode="w", format="mp4", options={"movflags": "+faststart"}
            )
            self.codec_name = _video_encoder(av)
            stream = self._container.add_stream(self.codec_name, rate=self.fps)
            stream.height, stream.width = self.encoded_size
            stream.pix_fmt = "yuv420p"
            context = stream.codec_context
            context.time_base = 1 / self.fps
            context.colorspace = context.color_primaries = context.color_trc = _BT709
            context.color_range = _MPEG_RANGE
            if self.codec_name == "libx264":
                stream.options = dict(_X264_OPTIONS)
            self._stream = stream
            self._video_frame = av.VideoFrame
        except BaseException:
            self.abort()
            raise
        self.closed = False

    def encode(self, image: np.ndarray) -> None:
        """Encode one RGB frame of ``size`` (padded to ``encoded_size``)."""
        if self.closed:
            raise ValueError(f"video writer for {self.path} is closed")
        pad_h, pad_w = self.encoded_size[0] - self.size[0], self.encoded_size[1] - self.size[1]
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = self._video_frame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        frame.colorspace, frame.color_range = _BT709, _MPEG_RANGE  # older PyAV does not tag it
        frame.pts = self.frames
        frame.time_base = self._stream.codec_context.time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and rename the file into place (at least one frame is needed)."""
        if self.closed:
            return
        try:
            if self.frames == 0:
                raise ValueError(f"no frames were written to {self.path}; not creating an empty video")
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            os.replace(self.temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Stop encoding and remove the temporary file; the target is not created."""
        self.closed = True
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except Exception:  # a broken partial file: it is deleted below anyway
                pass
        self.temp_path.unlink(missing_ok=True)


class _VideoWriter:
    """Context-manager plumbing shared by the video writers: close on success, abort on error."""

    _encoder: _Mp4Encoder

    @property
    def path(self) -> Path:
        return self._encoder.path

    @property
    def codec_name(self) -> str:
        """The encoder in use (``"libx264"`` unless PyAV lacks it)."""
        return self._encoder.codec_name

    @property
    def encoded_size(self) -> Size:
        """``(height, width)`` of the video: the frame size, rounded up to even."""
        return self._encoder.encoded_size

    @property
    def frames_written(self) -> int:
        return self._encoder.frames

    def close(self) -> None:
        """Finish the video and move it to ``path``."""
        self._encoder.close()

    def abort(self) -> None:
        """Drop the video: no file is left at ``path`` or under a temporary name."""
        self._encoder.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class OverlayVideoWriter(_VideoWriter):
    """An mp4 of the frames with their objects drawn on them (see :func:`draw_overlay` and the
    module docstring for codec, colours and odd sizes)."""

    def __init__(
        self, path: PathLike, fps: float, size: Size, *, labels: bool = True, contours: bool = True
    ) -> None:
        self.size = _check_size(size)
        self.labels, self.contours = labels, contours
        self._encoder = _Mp4Encoder(path, fps, self.size)

    def write(self, frame_rgb: np.ndarray, masks: Masks) -> None:
        """Append one frame (RGB uint8 ``(H, W, 3)``) with its objects' boolean ``(H, W)`` masks."""
        frame = _check_frame(frame_rgb, self.size)
        self._encoder.encode(draw_overlay(frame, masks, labels=self.labels, contours=self.contours))


class SideBySideWriter(_VideoWriter):
    """An mp4 comparing two segmentations of the same frames: left and right overlays next to each
    other, ``gap`` grey pixels apart, each titled (top-left) with a frame counter (top-right).

    The video is ``(H, 2 * W + gap)`` (rounded up to even, see the module docstring)."""

    def __init__(
        self,
        path: PathLike,
        fps: float,
        size: Size,
        left_title: str = "SAM 2",
        right_title: str = "SAM2Long",
        *,
        gap: int = 8,
        labels: bool = True,
        contours: bool = True,
    ) -> None:
        self.size = _check_size(size)
        if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
            raise ValueError(f"gap must be a non-negative int, got {gap!r}")
        self.left_title, self.right_title, self.gap = str(left_title), str(right_title), gap
        self.labels, self.contours = labels, contours
        height, width = self.size
        self._encoder = _Mp4Encoder(path, fps, (height, 2 * width + gap))

    def _half(self, frame: np.ndarray, masks: Masks, title: str, frame_idx: int) -> np.ndarray:
        half = draw_overlay(frame, masks, labels=self.labels, contours=self.contours)
        _draw_label(half, title, 0, 0, (0, 0, 0), above=False)
        _draw_label(half, f"frame {frame_idx}", half.shape[1], 0, (0, 0, 0), above=False)
        return half

    def write(self, frame_rgb: np.ndarray, left_masks: Masks, right_masks: Masks, frame_idx: int) -> None:
        """Append one frame drawn twice: with ``left_masks`` on the left, ``right_masks`` on the right."""
        frame = _check_frame(frame_rgb, self.size)
        height, width = self.size
        canvas = np.full((height, 2 * width + self.gap, 3), _GAP_GREY, dtype=np.uint8)
        canvas[:, :width] = self._half(frame, left_masks, self.left_title, frame_idx)
        canvas[:, width + self.gap :] = self._half(frame, right_masks, self.right_title, frame_idx)
        self._encoder.encode(canvas)


# --------------------------------------------------------------------------- mask PNGs


class _PngWriter:
    """Frame-size and palette bookkeeping shared by the PNG writers: ``size``, or the first frame's
    masks; ``palette`` (768 RGB bytes or ints), DAVIS's by default."""

    def __init__(
        self, out_dir: PathLike, *, size: Optional[Size] = None, palette: Optional[Palette] = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.size = None if size is None else _check_size(size)
        self.palette = DAVIS_PALETTE if palette is None else palette

    def _checked(self, frame_name: str, masks: Masks) -> tuple[str, dict[int, np.ndarray]]:
        name = _check_frame_name(frame_name)
        if self.size is None:
            first = next(iter(masks.values()), None)
            if first is None:
                raise ValueError(f"frame {name!r} has no objects and {type(self).__name__} was given no size")
            self.size = _check_size(np.squeeze(np.asarray(first)).shape, f"mask shape of frame {name!r}")
        return name, _check_masks(masks, self.size)


class PalettePngWriter(_PngWriter):
    """``<out_dir>/<frame_name>.png``: one palette PNG per frame, label = object id (1..255; on
    overlap the smaller id wins). The frame size is ``size`` or the first frame's."""

    def write(self, frame_name: str, masks: Masks) -> Path:
        """Write one frame's masks; returns the PNG's path."""
        name, per_obj = self._checked(frame_name, masks)
        for obj_id in per_obj:
            if not 0 < obj_id < 256:
                raise ValueError(
                    f"object id {obj_id} does not fit a palette PNG (ids 1..255); use PerObjectPngWriter "
                    "(per-object PNGs) instead"
                )
        path = self.out_dir / f"{name}.png"
        write_png(path, merge_objects(per_obj, *self.size), self.palette)
        return path


class PerObjectPngWriter(_PngWriter):
    """``<out_dir>/<obj_id:03d>/<frame_name>.png``: one 0/1 palette PNG per object and frame, for
    any id >= 0 (the SA-V layout). The frame size is ``size`` or the first frame's."""

    def write(self, frame_name: str, masks: Masks) -> list[Path]:
        """Write one PNG per object of this frame; returns their paths in id order."""
        name, per_obj = self._checked(frame_name, masks)
        negative = [obj_id for obj_id in per_obj if obj_id < 0]
        if negative:
            raise ValueError(f"object id {negative[0]} is negative; per-object folders need ids >= 0")
        paths = []
        for obj_id, mask in per_obj.items():
            path = self.out_dir / f"{obj_id:03d}" / f"{name}.png"
            write_png(path, mask, self.palette)
            paths.append(path)
        return paths


# --------------------------------------------------------------------------- COCO RLE


class CocoRleWriter:
    """Collects every frame's objects as COCO RLE and writes one JSON file (schema: module
    docstring) atomically on :meth:`close`. Holds only the RLE strings, never masks. Used as a
    context manager, an exception inside the block discards everything: no file is written."""

    def __init__(self, path: PathLike, height: int, width: int) -> None:
        self._mask_utils = _require("pycocotools.mask", "pycocotools", "writing COCO RLE")
        self.path = Path(path)
        self.size = _check_size((height, width), "height, width")
        self._frames: dict[int, dict[str, Any]] = {}
        self.closed = False

    def write(self, frame_idx: int, frame_name: str, masks: Masks) -> None:
        """Add (or replace) frame ``frame_idx`` named ``frame_name`` with its objects' masks."""
        if self.closed:
            raise ValueError(f"COCO RLE writer for {self.path} is closed")
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)) or frame_idx < 0:
            raise ValueError(f"frame_idx must be a non-negative int, got {frame_idx!r}")
        objects = []
        for obj_id, mask in _check_masks(masks, self.size).items():
            rle = self._mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
            objects.append(
                {
                    "obj_id": obj_id,
                    "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": int(self._mask_utils.area(rle)),
                    "bbox": [float(v) for v in self._mask_utils.toBbox(rle)],
                }
            )
        self._frames[int(frame_idx)] = {
            "frame_idx": int(frame_idx),
            "frame_name": str(frame_name),
            "objects": objects,
        }

    def close(self) -> None:
        """Write the JSON file (once; later calls do nothing)."""
        if self.closed:
            return
        height, width = self.size
        frames = [self._frames[idx] for idx in sorted(self._frames)]
        atomic_write_json(self.path, {"height": height, "width": width, "frames": frames})
        self.closed = True
        self._frames = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.closed, self._frames = True, {}


# --------------------------------------------------------------------------- run summary


def write_summary(path: PathLike, **fields: Any) -> None:
    """Write the run summary (frames, fps, device, model, tree settings, ...) as JSON, atomically;
    a value JSON cannot hold raises TypeError naming its field before anything is written."""
    for key, value in fields.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise TypeError(f"summary field {key!r} is not JSON-serialisable: {error}") from error
    atomic_write_json(path, fields)


__all__ = [
    "CocoRleWriter",
    "OverlayVideoWriter",
    "PalettePngWriter",
    "PerObjectPngWriter",
    "SideBySideWriter",
    "VIDEO_ENCODERS",
    "draw_overlay",
    "object_colour",
    "write_summary",
]
