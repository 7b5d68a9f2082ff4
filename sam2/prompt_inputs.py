"""Validation and conversion of user prompts (clicks, boxes, masks) into model inputs.

Every check names what is wrong in the user's terms (video pixels, frame indices), so a bad prompt
fails before any model call.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sam2.engine import PropagationCursor


def check_frame_idx(frame_idx: Any, num_frames: int, propagation: Optional[PropagationCursor]) -> None:
    """A prompt's frame must be an integer index of the video, still ahead of a running propagation."""
    if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
        raise ValueError(f"frame_idx must be an integer, got {frame_idx!r}")
    if not 0 <= frame_idx < num_frames:
        raise ValueError(f"frame_idx {frame_idx} is outside the video's frames 0..{num_frames - 1}")
    if propagation is not None and propagation.passed(frame_idx):
        raise ValueError(
            f"frame {frame_idx} was already processed by the propagation in progress (its next frame "
            f"is {propagation.next_frame}); prompts added during a propagation must be on frames still ahead"
        )


def point_prompt(
    points: Any,
    labels: Any,
    box: Any,
    clear_old_points: bool,
    normalize_coords: bool,
    video_size: tuple[int, int],
    image_size: int,
) -> tuple[Tensor, Tensor]:
    """Validate clicks/box and convert them to model-space ``(1, P, 2)`` coords and ``(1, P)`` labels.

    ``video_size`` is ``(height, width)``. A box becomes two leading points labelled 2 (top-left) and 3
    (bottom-right), the way SAM 2 was trained.
    """
    if (points is None) != (labels is None):
        raise ValueError("points and labels must be provided together")
    if points is None and box is None:
        raise ValueError("at least one of points or box must be provided as input")
    if box is not None and not clear_old_points:
        raise ValueError("a box must come before any click on a frame; use clear_old_points=True with a box")
    height, width = video_size
    limits = (width, height) if normalize_coords else (1.0, 1.0)
    space = (
        f"video pixels (0..{width} x 0..{height})" if normalize_coords else "[0, 1] (normalize_coords=False)"
    )
    coords = torch.zeros(0, 2) if points is None else torch.as_tensor(points, dtype=torch.float32)
    point_labels = (
        torch.zeros(0, dtype=torch.int32) if labels is None else torch.as_tensor(labels, dtype=torch.int32)
    )
    if coords.dim() == 2:
        coords = coords.unsqueeze(0)
    if point_labels.dim() == 1:
        point_labels = point_labels.unsqueeze(0)
    if coords.dim() != 3 or coords.shape[0] != 1 or coords.shape[2] != 2:
        raise ValueError(f"points must have shape (P, 2) as (x, y) pairs, got {tuple(coords.shape)}")
    if point_labels.dim() != 2 or point_labels.shape != coords.shape[:2]:
        raise ValueError(
            f"labels must have one entry per point: {coords.shape[1]} points but labels of shape "
            f"{tuple(point_labels.shape)}"
        )
    bad_labels = sorted(set(point_labels.flatten().tolist()) - {0, 1, 2, 3})
    if bad_labels:
        raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {bad_labels}")
    _check_in_frame("points", coords[0], limits, space)
    if box is not None:
        box_coords = torch.as_tensor(box, dtype=torch.float32)
        if box_coords.numel() != 4:
            raise ValueError(f"box must be (x0, y0, x1, y1), got {tuple(box_coords.shape)} values")
        box_coords = box_coords.reshape(1, 2, 2)
        x0, y0, x1, y1 = box_coords.flatten().tolist()
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"box must have x0 < x1 and y0 < y1, got {(x0, y0, x1, y1)}")
        _check_in_frame("box", box_coords[0], limits, space)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int32)
        coords = torch.cat([box_coords, coords], dim=1)
        point_labels = torch.cat([box_labels, point_labels], dim=1)
    if normalize_coords:
        coords = coords / torch.tensor([width, height], dtype=torch.float32)
    return coords * image_size, point_labels


def mask_prompt(mask: Any, video_size: tuple[int, int], image_size: int, device: torch.device) -> Tensor:
    """A ``(H, W)`` mask of the video's size as the model's ``(1, 1, S, S)`` binary mask input."""
    if not isinstance(mask, Tensor):
        mask = torch.tensor(np.asarray(mask), dtype=torch.bool)
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(mask.shape)}")
    if tuple(mask.shape) != tuple(video_size):
        raise ValueError(
            f"mask must have the video's size (H, W) = {tuple(video_size)}, got {tuple(mask.shape)}"
        )
    mask_inputs = mask[None, None].float().to(device)
    if mask_inputs.shape[-2:] != (image_size, image_size):
        mask_inputs = F.interpolate(
            mask_inputs,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,  # the mask is usually larger than the model input
        )
        mask_inputs = (mask_inputs >= 0.5).float()
    return mask_inputs


def concat_points(
    old_point_inputs: Optional[dict[str, Tensor]], new_points: Tensor, new_labels: Tensor
) -> dict[str, Tensor]:
    """Append new clicks ``(B, P, 2)`` and their labels ``(B, P)`` after any earlier ones, in the form the
    SAM heads take (``{"point_coords", "point_labels"}``)."""
    if old_point_inputs is None:
        return {"point_coords": new_points, "point_labels": new_labels}
    return {
        "point_coords": torch.cat([old_point_inputs["point_coords"], new_points], dim=1),
        "point_labels": torch.cat([old_point_inputs["point_labels"], new_labels], dim=1),
    }


def _check_in_frame(what: str, xy: Tensor, limits: tuple[float, float], space: str) -> None:
    """Every ``(x, y)`` row of ``xy`` lies inside ``[0, limits[0]] x [0, limits[1]]``."""
    if xy.numel() == 0:
        return
    if not torch.isfinite(xy).all():
        raise ValueError(f"{what} must be finite numbers, got {xy.tolist()}")
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= limits[0]) & (xy[:, 1] >= 0) & (xy[:, 1] <= limits[1])
    if not inside.all():
        outside = xy[~inside].tolist()
        raise ValueError(f"{what} {outside} lie outside the frame; coordinates are in {space}")
