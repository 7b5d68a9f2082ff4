"""Folder scanning and mask checks specific to the evaluators.

Reading and writing mask PNGs, the palette and atomic file output are shared with the VOS tool
and live in :mod:`sam2long.mask_io`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam2long.mask_io import MaskError, read_mask


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
