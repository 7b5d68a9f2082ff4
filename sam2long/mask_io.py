"""Mask PNG files and atomic file output, shared by the VOS tool and the evaluators.

The one place for:

* the DAVIS / PASCAL-VOC palette (:data:`DAVIS_PALETTE`);
* atomic writes: a temporary file in the target folder, then ``os.replace``, so a killed
  process never leaves a truncated file under its final name (:func:`atomic_write` and the
  bytes / text / JSON helpers; :func:`remove_temp_files` clears what a killed writer left);
* reading a mask PNG as a label map, with one rule (see :func:`read_mask_with_palette`);
* encoding and writing label maps as PNGs, never wrapping values (:func:`encode_png`,
  :func:`write_png`);
* splitting a label map into per-object masks and merging them back.

Numpy and Pillow only, so the evaluators need no model code.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
from PIL import Image

PathLike = Union[str, os.PathLike]
Palette = Union[bytes, Sequence[int]]

# Every temporary file of an atomic write is named ``<TEMP_PREFIX><target name>.<random><TEMP_SUFFIX>``.
TEMP_PREFIX = ".partial-"
TEMP_SUFFIX = ".tmp"
_TEMP_NAME_CHARS = 100  # of the target name kept in the temporary name (file names are <= 255 bytes)


class MaskError(ValueError):
    """A mask file that cannot be used: unreadable, a colour image or of an unsupported kind."""


def _voc_colormap() -> bytes:
    """The PASCAL VOC / DAVIS 2017 colour map: the bits of the label spread over R, G, B."""
    table = bytearray()
    for label in range(256):
        red = green = blue = 0
        bits = label
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        table += bytes((red, green, blue))
    return bytes(table)


# Palette of the DAVIS 2017 annotations (768 bytes, RGB per label), for palette PNGs whose
# inputs carry no palette of their own.
DAVIS_PALETTE = _voc_colormap()


# --------------------------------------------------------------------------- atomic writes


def temp_path(target: PathLike) -> Path:
    """A fresh temporary name beside ``target`` (the one naming rule of atomic writes here, so
    :func:`remove_temp_files` finds leftovers of writers that stream into their own file)."""
    target = Path(target)
    return target.with_name(
        f"{TEMP_PREFIX}{target.name[:_TEMP_NAME_CHARS]}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
    )


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any], fsync: bool = False) -> None:
    """Create ``path`` by calling ``write(handle)`` on a temporary file in the same folder, then
    renaming it into place.

    Readers never see a partial file: if ``write`` raises (or the process dies) the target keeps
    its previous content and the temporary file is removed (or left for
    :func:`remove_temp_files`). ``fsync`` flushes the data to disk before the rename, for files
    that gate later decisions (e.g. resume markers). The file gets the usual permissions
    (``0o666`` minus the umask).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(data), fsync=fsync)


def atomic_write_text(path: PathLike, text: str, fsync: bool = False) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: PathLike, payload: Any, fsync: bool = False) -> None:
    """Write ``payload`` as indented JSON (plus a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n", fsync=fsync)


def remove_temp_files(folder: PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` and its sub-folders."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in root.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------- reading masks


def _labels_of(path: PathLike, mode: str, array: np.ndarray) -> np.ndarray:
    """The label map of a decoded image of PIL ``mode`` (the rule of :func:`read_mask_with_palette`)."""
    if mode in ("P", "L", "1"):
        return array.astype(np.uint8, copy=False)
    if mode in ("PA", "LA"):
        return np.ascontiguousarray(array[..., 0])
    if mode.startswith("I;16"):
        return array.astype(np.uint16, copy=False)  # also byte-swaps big-endian variants
    if mode == "I":  # 32-bit integers: how some Pillow versions open 16-bit PNGs
        if array.size and (array.min() < 0 or array.max() > 0xFFFF):
            raise MaskError(f"mask file {path} holds values outside [0, 65535]; expected a 8- or 16-bit mask")
        return array.astype(np.uint16)
    if mode in ("RGB", "RGBA"):
        colour = array[..., :3]
        if not (colour == colour[..., :1]).all():
            raise MaskError(
                f"mask file {path} is a colour image; expected a palette (indexed) or single-channel PNG "
                "(or RGB with equal channels)"
            )
        return np.ascontiguousarray(colour[..., 0])
    raise MaskError(
        f"mask file {path} has unsupported image mode {mode!r}; expected a palette or grayscale PNG"
    )


def read_mask_with_palette(path: PathLike) -> tuple[np.ndarray, Optional[list[int]]]:
    """Read a mask image as an ``(H, W)`` label map, plus its palette (None unless indexed).

    The rule, the same for every reader of masks in this project:

    * palette images ('P', 'PA'): the palette indices (uint8);
    * 8- or 16-bit grayscale ('L', 'I;16', 'LA', bilevel '1'): the grey values, uint8 or uint16
      as stored, never wrapped;
    * RGB / RGBA whose three colour channels are equal everywhere (a grey mask saved as colour):
      that grey value (uint8);
    * alpha channels are ignored;
    * a colour image, an unreadable file or another image mode: :class:`MaskError` naming the file.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            palette = image.getpalette() if mode in ("P", "PA") else None
            array = np.array(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise MaskError(f"cannot read mask file {path}: {error}") from error
    return _labels_of(path, mode, array), palette


def read_mask(path: PathLike) -> np.ndarray:
    """Read a mask image as an ``(H, W)`` label map (rule: :func:`read_mask_with_palette`)."""
    return read_mask_with_palette(path)[0]


# --------------------------------------------------------------------------- writing masks


def _palette_covering(palette: Palette, high: int) -> bytes:
    """``palette`` extended with DAVIS colours up to label ``high``: Pillow sizes an indexed PNG's
    bit depth by its palette, so a short palette would silently wrap larger labels."""
    table = bytes(palette)
    needed = 3 * (high + 1)
    return table if len(table) >= needed else table + DAVIS_PALETTE[len(table) : needed]


def encode_png(labels: np.ndarray, palette: Optional[Palette] = None) -> bytes:
    """PNG bytes of an ``(H, W)`` label map (bool or integer), never wrapping a value.

    With ``palette`` the labels must lie in [0, 255] and the PNG is indexed ('P'; a palette too
    short for the labels is completed with DAVIS colours); without, it is 8-bit grayscale when they fit in [0, 255] and 16-bit grayscale up to 65535. Anything else
    raises ``ValueError``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {labels.shape}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected bool or integer labels, got {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    limit = 0xFF if palette is not None else 0xFFFF
    if low < 0 or high > limit:
        kind = "a palette PNG" if palette is not None else "a 16-bit PNG"
        raise ValueError(f"labels in [{low}, {high}] do not fit {kind} (0..{limit})")
    dtype = np.uint8 if high <= 0xFF else np.uint16
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=dtype))
    if palette is not None:
        image.putpalette(_palette_covering(palette, high))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: PathLike, labels: np.ndarray, palette: Optional[Palette] = None) -> None:
    """Atomically write a label map as a PNG (encoding: :func:`encode_png`)."""
    atomic_write_bytes(path, encode_png(labels, palette))


def split_objects(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Boolean mask of every non-zero label, keyed by label, in increasing label order."""
    return {int(value): labels == value for value in np.unique(labels) if value > 0}


def merge_objects(per_obj: Mapping[int, np.ndarray], height: int, width: int) -> np.ndarray:
    """Pack boolean object masks into one uint8 label map; on overlap the smaller id wins.

    Ids must lie in [1, 255] (one 8-bit palette PNG); use per-object PNGs for larger ones.
    """
    labels = np.zeros((height, width), dtype=np.uint8)
    for obj_id in sorted(per_obj, reverse=True):
        if not 0 < obj_id < 256:
            raise ValueError(f"object id {obj_id} does not fit a single 8-bit PNG (use per-object PNGs)")
        labels[np.asarray(per_obj[obj_id]).reshape(height, width)] = obj_id
    return labels
