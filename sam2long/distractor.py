"""DAM4SAM's distractor-aware memory (Videnovic et al., 2025), as model-free rules over frame indices,
masks and plain numbers.

The memory of a pathway has two parts:

- **DRM** (distractor-resolving memory): the conditioning frames plus frames added while tracking,
  each remembered like a prompted frame; at most ``max_frames`` attend (:func:`select_drm`);
- **RAM** (recent-appearance memory): the other slots, filled with recent frames where the object was
  visible, the adjacent one first, then one every ``stride`` frames (:func:`plan_ram`), with temporal
  encodings by rank (:func:`memory_layout`).

A tracked frame joins the DRM (:func:`should_add`) when its choice is confident (predicted IoU), the
object keeps its size (against the median of its recent sizes, :class:`SizeHistory`), it is visible, the
last addition is more than ``min_gap`` frames back, and an alternative candidate, cut down to the
largest component of what it adds to the chosen mask, changes the chosen box (box IoU at most
``max_box_iou``): a likely distractor next to the object. Box overlaps are the VOT toolkit's
(:func:`vot_box_iou`), as the official code computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class DistractorConfig:
    """DAM4SAM's values (``dam4sam_tracker.py`` and its ``sam21pp`` configs)."""

    min_iou: float = 0.8  # a frame joins the DRM only above this predicted IoU
    size_ratio: tuple[float, float] = (0.8, 1.2)  # object area against the median of its recent areas
    size_history: int = 300  # frames the recent areas are taken from ...
    size_samples: int = 10  # ... the latest this many non-empty ones
    min_gap: int = 5  # frames since the last addition must exceed this
    max_box_iou: float = 0.7  # an alternative whose box IoU with the chosen box is at most this
    max_frames: int = 4  # DRM frames attended (the model's max_cond_frames_in_attn in sam21pp)
    stride: int = 5  # RAM stride (memory_temporal_stride_for_eval in sam21pp)


def mask_box(mask: np.ndarray) -> Box:
    """Tight box ``(x0, y0, x1, y1)`` (inclusive pixel indices) of a boolean mask; zeros when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def vot_box_iou(a: Box, b: Box) -> float:
    """The VOT toolkit's overlap of two mask boxes (``Mask.convert(RECTANGLE)``, ``calculate_overlaps``):
    rectangles of width ``x1 - x0`` and height ``y1 - y0``; 1 when the union of their raster bounds is
    degenerate (the toolkit's "two empty regions"), 0 when both areas are zero otherwise."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    left, top = min(ax0, bx0), min(ay0, by0)
    right, bottom = max(ax1 - 1, bx1 - 1), max(ay1 - 1, by1 - 1)
    if left >= right or top >= bottom:
        return 1.0
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a non-empty boolean mask (OpenCV labelling; ties: the
    first label)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


@dataclass(frozen=True)
class SizeHistory:
    """A pathway's object areas: how many frames were measured and the latest non-empty ones (with the
    frame count at which each was measured), enough for :meth:`ratio`."""

    count: int = 0
    recent: tuple[tuple[int, int], ...] = ()  # (measurement index, area > 0), oldest first

    def add(self, area: int, config: DistractorConfig) -> SizeHistory:
        recent = self.recent + ((self.count, area),) if area >= 1 else self.recent
        window = self.count + 1 - config.size_history
        recent = tuple(item for item in recent if item[0] >= window)[-config.size_samples :]
        return SizeHistory(self.count + 1, recent)

    def ratio(self, area: int) -> float:
        """Area against the median of the recent non-empty areas (this frame's included, as measured
        after :meth:`add`); -1 on the first frame or for an empty mask."""
        if self.count <= 1 or area < 1:
            return -1.0
        return area / float(np.median([size for _, size in self.recent]))


@dataclass(frozen=True)
class Addition:
    """Why a frame did (or did not) join the DRM: the gates and the alternatives' box IoUs."""

    added: bool
    size_ratio: float
    box_ious: tuple[float, ...] = ()


def should_add(
    config: DistractorConfig,
    area: int,
    masks: Callable[[], tuple[np.ndarray, Sequence[np.ndarray]]],
    iou: float,
    size_ratio: float,
    frames_since_added: Optional[int],
) -> Addition:
    """DAM4SAM's rule for one tracked frame. ``area`` is the output mask's pixel count; ``masks`` gives
    the output mask and the other candidates' masks (video resolution, boolean), read only when the
    cheap gates pass; ``frames_since_added`` is None before the first addition."""
    low, high = config.size_ratio
    gap_ok = frames_since_added is None or frames_since_added > config.min_gap
    if not (iou > config.min_iou and low <= size_ratio <= high and area >= 1 and gap_ok):
        return Addition(False, size_ratio)
    chosen, alternatives = masks()
    chosen_box = mask_box(chosen)
    extensions = [alt & ~chosen for alt in alternatives]
    unions = [largest_component(ext) | chosen for ext in extensions if ext.sum() >= 1]
    if not unions:
        return Addition(False, size_ratio)
    ious = tuple(vot_box_iou(chosen_box, mask_box(u)) for u in unions)
    return Addition(min(ious) <= config.max_box_iou, size_ratio, ious)


def select_drm(frame: int, drm_frames: Sequence[int], anchor: int, max_frames: int) -> list[int]:
    """DRM frames attended at ``frame``, in attention order: the latest one before ``frame - 1``, the
    ``anchor`` (the object's first conditioning frame, always), then the closest others but never
    ``frame - 1`` (the adjacent frame belongs to the RAM), up to ``max_frames``."""
    selected: list[int] = []
    before = [t for t in drm_frames if t < frame - 1]
    if before and max(before) >= 0:
        selected.append(max(before))
    if anchor not in selected:
        selected.append(anchor)
    rest = sorted((t for t in drm_frames if t not in selected and t != frame - 1), key=lambda t: abs(t - frame))
    return selected + rest[: max(0, max_frames - len(selected))]


def plan_ram(
    frame: int,
    slots: int,
    stride: int,
    visible: Callable[[int], bool],
    adjacent_visible: Callable[[int], bool],
    selected: set[int],
) -> tuple[list[Optional[int]], list[int]]:
    """RAM frames for ``slots`` slots, newest first (None: an empty slot), and where each slot's search
    ended (its frame, or the index at which it gave up: :func:`memory_layout` sorts by it).

    The first slot is the adjacent frame if the object was visible there (``adjacent_visible``: a
    tracked frame or an unselected DRM frame), else the latest tracked frame before it where it was
    (``visible``: tracked frames only); each next slot goes down to the ``stride`` grid below the
    previous one, and further down the grid past frames without the object. Frame 0 and the selected
    DRM frames never fill a slot.
    """
    frames: list[Optional[int]] = []
    positions: list[int] = []
    index = frame - 1
    for slot in range(slots):
        if slot == 0:
            found, step = adjacent_visible(index) and index not in selected, 1
        elif index >= 0:
            index = ((index - 1) // stride) * stride
            found, step = visible(index) and index not in selected, stride
        else:
            found, step = False, 0
        while not found and step:
            index -= step
            if index <= 0:
                break
            found = visible(index) and index not in selected
        frames.append(index if found else None)
        positions.append(index)
    return frames, positions


def memory_layout(num_drm: int, positions: Sequence[int], filled: Sequence[bool]) -> list[tuple[int, int, int]]:
    """Attention order and temporal-encoding rows of the memory frames, as ``(kind, which, row)``:
    kind 0 for DRM frame ``which`` (in selection order), kind 1 for RAM slot ``which`` (only filled ones).

    DAM4SAM sorts the DRM entries (key 0) and the RAM slots (key: ``positions``, empty slots included)
    together, stable, and gives entry ``i`` of ``n`` the row ``n - i - 1``; DRM entries keep the
    conditioning row ``n - 1``.
    """
    entries = [(0, 0, d) for d in range(num_drm)] + [(pos, 1, s) for s, pos in enumerate(positions)]
    entries.sort(key=lambda entry: entry[0])
    total = len(entries)
    layout = []
    for rank, (key, kind, which) in enumerate(entries):
        if kind == 0:
            layout.append((0, which, total - 1))
        elif filled[which]:
            layout.append((1, which, total - (0 if key == 0 else rank) - 1))
    return layout
