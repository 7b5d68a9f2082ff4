"""Region similarity J and boundary F-measure, vectorised over a stack of frames.

The definitions follow the DAVIS protocol (Perazzi et al. 2016) exactly as the SA-V and
DAVIS/LVOS reference evaluators compute them:

* J is the intersection over union of the two binary masks; two empty masks score 1.
* F is the harmonic mean of boundary precision and recall. Boundaries are the 1-pixel
  contours of ``boundary_map``; a boundary pixel counts as matched when it lies within a
  disk of radius ``ceil(0.008 * image diagonal)`` of the other mask's boundary.

All functions accept masks shaped ``(H, W)`` or ``(T, H, W)`` and return one value per frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008
# cv2.dilate handles at most this many channels in one call (CV_CN_MAX).
_MAX_CV_CHANNELS = 512


def boundary_radius(height: int, width: int, tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Matching radius in pixels: the tolerance times the image diagonal, rounded up."""
    return int(math.ceil(tolerance * math.hypot(height, width)))


def disk_kernel(radius: int) -> np.ndarray:
    """Square uint8 kernel of side ``2 * radius + 1`` that is 1 inside the closed disk of that radius."""
    offsets = np.arange(-radius, radius + 1)
    squared_distance = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return (squared_distance <= radius * radius).astype(np.uint8)


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundaries of binary masks (last two axes are H, W).

    A pixel is on the boundary when it differs from its right, lower or lower-right
    neighbour. Pixels of the last row only look right, those of the last column only look
    down, and the bottom-right corner is never a boundary. This places the contour half a
    pixel towards the origin, as in the Berkeley ``seg2bmap`` routine used by DAVIS.
    """
    seg = masks.astype(bool, copy=False)
    edges = np.zeros(seg.shape, dtype=bool)
    edges[..., :, :-1] |= seg[..., :, :-1] != seg[..., :, 1:]
    edges[..., :-1, :] |= seg[..., :-1, :] != seg[..., 1:, :]
    edges[..., :-1, :-1] |= seg[..., :-1, :-1] != seg[..., 1:, 1:]
    return edges


def _dilate_stack(edges: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Dilate every (H, W) slice of a (T, H, W) bool stack; frames ride along as image channels."""
    num_frames = edges.shape[0]
    out = np.empty(edges.shape, dtype=bool)
    for start in range(0, num_frames, _MAX_CV_CHANNELS):
        chunk = edges[start : start + _MAX_CV_CHANNELS].astype(np.uint8)
        if chunk.shape[0] == 1:
            dilated = cv2.dilate(chunk[0], kernel)[None]
        else:
            dilated = np.moveaxis(cv2.dilate(np.ascontiguousarray(np.moveaxis(chunk, 0, -1)), kernel), -1, 0)
        out[start : start + chunk.shape[0]] = dilated > 0
    return out


def _as_stack(masks: np.ndarray) -> np.ndarray:
    arr = np.asarray(masks)
    if arr.ndim == 2:
        return arr[None].astype(bool, copy=False)
    if arr.ndim == 3:
        return arr.astype(bool, copy=False)
    raise ValueError(f"expected a (H, W) or (T, H, W) mask array, got shape {arr.shape}")


def _check_shapes(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void mask shape {void.shape} differs from ground-truth shape {gt.shape}")


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """Per-frame Jaccard index J; pixels where ``void`` is set are ignored; empty vs empty gives 1."""
    pred_s, gt_s = _as_stack(pred), _as_stack(gt)
    void_s = None if void is None else _as_stack(void)
    _check_shapes(pred_s, gt_s, void_s)
    valid = True if void_s is None else ~void_s
    inter = np.count_nonzero(pred_s & gt_s & valid, axis=(-2, -1))
    union = np.count_nonzero((pred_s | gt_s) & valid, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = inter / union
    return np.where(union == 0, 1.0, scores)


def boundary_f_measure(
    pred: np.ndarray,
    gt: np.ndarray,
    void: np.ndarray | None = None,
    tolerance: float = BOUNDARY_TOLERANCE,
) -> np.ndarray:
    """Per-frame boundary F-measure with a matching radius of ``tolerance`` times the image diagonal.

    Degenerate cases: no boundary in either mask gives 1; a boundary in only one of them gives 0.
    """
    pred_s, gt_s = _as_stack(pred), _as_stack(gt)
    void_s = None if void is None else _as_stack(void)
    _check_shapes(pred_s, gt_s, void_s)
    if void_s is not None:
        pred_s = pred_s & ~void_s
        gt_s = gt_s & ~void_s
    height, width = gt_s.shape[-2:]
    kernel = disk_kernel(boundary_radius(height, width, tolerance))

    pred_edges = boundary_map(pred_s)
    gt_edges = boundary_map(gt_s)
    n_pred = np.count_nonzero(pred_edges, axis=(-2, -1))
    n_gt = np.count_nonzero(gt_edges, axis=(-2, -1))
    pred_hits = np.count_nonzero(pred_edges & _dilate_stack(gt_edges, kernel), axis=(-2, -1))
    gt_hits = np.count_nonzero(gt_edges & _dilate_stack(pred_edges, kernel), axis=(-2, -1))

    with np.errstate(invalid="ignore", divide="ignore"):
        precision = pred_hits / n_pred.astype(np.float64)
        recall = gt_hits / n_gt.astype(np.float64)
        harmonic = 2 * precision * recall / (precision + recall)
    harmonic = np.where(precision + recall == 0, 0.0, harmonic)
    both_empty = (n_pred == 0) & (n_gt == 0)
    one_empty = (n_pred == 0) ^ (n_gt == 0)
    return np.where(both_empty, 1.0, np.where(one_empty, 0.0, harmonic))
