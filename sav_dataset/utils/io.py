"""Mask reading/writing, folder scanning and atomic file output for the evaluators."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

_PALETTE_BITS = 8


class MaskError(ValueError):
    """A mask file that cannot be used: unreadable, not single-channel or of the wrong size."""


def davis_palette() -> list[int]:
    """Flat RGB list of the 256-colour DAVIS/PASCAL palette, used for palette PNGs."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(_PALETTE_BITS):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette.extend((red, green, blue))
    return palette


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG as a 2-D label array (palette indices for 'P' images, grey values otherwise).

    Colour images are only accepted when all channels are equal (a grey mask saved as RGB);
    anything else raises ``MaskError`` naming the file.
    """
    try:
        with Image.open(path) as image:
            array = np.array(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise MaskError(f"cannot read mask {path}: {err}") from err
    if array.ndim == 3:
        channels = array[..., :3]
        if not (channels == channels[..., :1]).all():
            raise MaskError(f"{path} is a colour image; expected a palette (indexed) or single-channel PNG")
        array = channels[..., 0]
    if array.ndim != 2:
        raise MaskError(f"{path} has unsupported shape {array.shape}; expected (H, W)")
    return array


def read_mask_or_empty(path: Path, like_shape: tuple[int, int], reference: Path) -> np.ndarray:
    """Read a predicted mask; a missing file counts as an empty mask of ``like_shape``.

    Raises ``MaskError`` naming both files when the sizes differ.
    """
    if not path.exists():
        return np.zeros(like_shape, dtype=np.uint8)
    mask = read_mask(path)
    if mask.shape != like_shape:
        raise MaskError(
            f"size mismatch: {path} is {mask.shape[1]}x{mask.shape[0]} but "
            f"{reference} is {like_shape[1]}x{like_shape[0]} (width x height)"
        )
    return mask


def has_at_most_two_values(mask: np.ndarray) -> bool:
    """True when ``mask`` holds at most two distinct values (cheaper than ``np.unique``)."""
    if mask.size == 0:
        return True
    low, high = mask.min(), mask.max()
    return not np.any((mask != low) & (mask != high))


def label_values(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer label array (bincount for 8/16-bit labels)."""
    if labels.dtype in (np.uint8, np.uint16) and labels.size:
        return np.flatnonzero(np.bincount(labels.ravel()))
    return np.unique(labels)


def stack_masks(masks: list[np.ndarray], paths: list[Path]) -> np.ndarray:
    """Stack same-sized masks into (T, H, W); a frame of another size is an error naming its file."""
    for mask, path in zip(masks, paths):
        if mask.shape != masks[0].shape:
            raise MaskError(
                f"{path} is {mask.shape[1]}x{mask.shape[0]} but {paths[0]} is "
                f"{masks[0].shape[1]}x{masks[0].shape[0]}; all frames of a video must have one size"
            )
    return np.stack(masks)


def list_pngs(folder: Path) -> list[str]:
    """Sorted names of the .png files directly inside ``folder``."""
    return sorted(
        entry.name for entry in os.scandir(folder) if entry.is_file() and entry.name.endswith(".png")
    )


def list_subdirs(folder: Path) -> list[str]:
    """Sorted names of the sub-folders directly inside ``folder``."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Create ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a half-written file, and a crash leaves at most a stray temp file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_png(path: str | os.PathLike, mask: np.ndarray, palette: list[int] | None = None) -> None:
    """Write a uint8 mask as PNG atomically; with ``palette`` it becomes an indexed ('P') image."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    if palette is not None:
        image.putpalette(palette)
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))
