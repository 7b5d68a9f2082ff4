"""Mask post-processing: connected components, hole filling / sprinkle removal, tight boxes.

Everything here runs on any device. In particular the connected-component labelling (used to
fill small holes in predicted masks) has a pure-torch path for CUDA tensors and an OpenCV path
for everything else; the optional compiled ``sam2._C`` CUDA extension is only an accelerator, never a
requirement, so post-processing behaves the same with or without it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch


@functools.cache
def _compiled_cuda_extension() -> Any:
    """The optional compiled extension ``sam2._C`` if it was built, else None (looked up once)."""
    try:
        from sam2 import _C  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _C


def _canonical_labels_and_areas(
    component_ids: torch.Tensor, foreground: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn arbitrary per-pixel component ids into canonical labels and per-pixel areas.

    ``component_ids`` and ``foreground`` are (B, H*W); ids are any non-negative integers below
    H*W that are equal exactly within a component. The canonical label of a component is one plus
    the raster index of its first pixel, so labels do not depend on the labelling algorithm.
    """
    batch, num_pixels = component_ids.shape
    ids = torch.where(foreground, component_ids, 0).long()
    pixel_index = torch.arange(num_pixels, device=ids.device).expand(batch, num_pixels)
    first_pixel = torch.full((batch, num_pixels), num_pixels, dtype=torch.long, device=ids.device)
    first_pixel.scatter_reduce_(1, ids, torch.where(foreground, pixel_index, num_pixels), reduce="amin")
    area = torch.zeros((batch, num_pixels), dtype=torch.long, device=ids.device)
    area.scatter_add_(1, ids, foreground.long())
    labels = torch.where(foreground, first_pixel.gather(1, ids) + 1, 0)
    areas = torch.where(foreground, area.gather(1, ids), 0)
    return labels.to(torch.int32), areas.to(torch.int32)


def _component_ids_opencv(foreground: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel component ids of (B, H*W) boolean CPU masks, labelled by OpenCV."""
    import cv2

    planes = foreground.reshape(-1, height, width).to(torch.uint8).numpy()
    ids = np.empty(planes.shape, dtype=np.int32)
    for index, plane in enumerate(planes):
        _, ids[index] = cv2.connectedComponents(plane, connectivity=8, ltype=cv2.CV_32S)
    return torch.from_numpy(ids.reshape(foreground.shape))


def _neighbourhood_max(values: torch.Tensor) -> torch.Tensor:
    """Maximum over each pixel's 3x3 neighbourhood of a (B, H, W) integer tensor (zero padding)."""
    height, width = values.shape[-2:]
    padded = torch.nn.functional.pad(values, (1, 1, 1, 1))
    result = values.clone()
    for dy in range(3):
        for dx in range(3):
            torch.maximum(result, padded[:, dy : dy + height, dx : dx + width], out=result)
    return result


def _component_ids_torch(foreground: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel component ids of (B, H*W) boolean masks on any device, in pure torch.

    Each foreground pixel starts with a score ``H*W - raster_index`` and repeatedly takes the
    largest score in its 8-neighbourhood, so a component converges to the score of its first
    pixel. Pointer jumping (a pixel adopts the current score of the pixel its score came from)
    shortens long chains, so convergence takes far fewer steps than the component's diameter.
    """
    batch, num_pixels = foreground.shape
    pixel_index = torch.arange(num_pixels, device=foreground.device)
    score = torch.where(foreground, num_pixels - pixel_index, 0)
    while True:
        spread = _neighbourhood_max(score.view(batch, height, width)).view(batch, num_pixels)
        spread = torch.where(foreground, spread, 0)
        source_pixel = (num_pixels - spread).clamp(max=num_pixels - 1)
        jumped = torch.where(foreground, spread.gather(1, source_pixel), 0)
        if torch.equal(jumped, score):
            break
        score = jumped
    return torch.where(foreground, num_pixels - score, 0)


def get_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label the 8-connected components of binary masks of shape (N, 1, H, W).

    Returns ``(labels, areas)``, both int32 tensors of the input's shape on its device. Background
    pixels get label 0 and area 0; every foreground pixel gets a positive label shared exactly by
    the pixels of its component, and the pixel count of that component as its area.

    CUDA tensors are labelled on the GPU (with the compiled ``sam2._C`` kernel when it was built,
    whose label values differ but carry the same meaning, else in pure torch); other tensors are
    labelled by OpenCV on the CPU and the results moved back to their device.
    """
    binary = mask.to(torch.uint8).contiguous()
    height, width = binary.shape[-2:]
    if binary.is_cuda:
        extension = _compiled_cuda_extension()
        if extension is not None:
            return extension.get_connected_componnets(binary)
        foreground = binary.reshape(-1, height * width).bool()
        component_ids = _component_ids_torch(foreground, height, width)
    else:
        foreground = binary.reshape(-1, height * width).bool().cpu()
        component_ids = _component_ids_opencv(foreground, height, width)
    labels, areas = _canonical_labels_and_areas(component_ids, foreground)
    return labels.view(binary.shape).to(mask.device), areas.view(binary.shape).to(mask.device)


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int, max_sprinkle_area: int = 0) -> torch.Tensor:
    """Fill small background holes (and optionally remove small foreground sprinkles) in mask logits.

    ``mask`` holds logits of shape (N, 1, H, W); foreground is ``mask > 0``. Background components
    of at most ``max_area`` pixels get the small positive score 0.1 (they become foreground). When
    ``max_sprinkle_area > 0``, foreground components of at most that many pixels then get the small
    negative score -0.1. Works on every device (see :func:`get_connected_components`).
    """
    if max_area <= 0:
        raise ValueError(f"max_area must be positive, got {max_area}")
    labels, areas = get_connected_components(mask <= 0)
    is_hole = (labels > 0) & (areas <= max_area)
    mask = torch.where(is_hole, 0.1, mask)
    if max_sprinkle_area > 0:
        labels, areas = get_connected_components(mask > 0)
        is_sprinkle = (labels > 0) & (areas <= max_sprinkle_area)
        mask = torch.where(is_sprinkle, -0.1, mask)
    return mask


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes around boolean masks of shape (B, 1, H, W).

    Returns int32 boxes of shape (B, 1, 4) as ``(x_min, y_min, x_max, y_max)`` in inclusive pixel
    coordinates; an empty mask gives ``(W, H, -1, -1)``.
    """
    height, width = masks.shape[-2:]
    device = masks.device
    columns_hit = masks.any(dim=-2)  # (B, 1, W)
    rows_hit = masks.any(dim=-1)  # (B, 1, H)
    xs = torch.arange(width, device=device, dtype=torch.int32)
    ys = torch.arange(height, device=device, dtype=torch.int32)
    x_min = torch.where(columns_hit, xs, width).amin(dim=-1)
    x_max = torch.where(columns_hit, xs, -1).amax(dim=-1)
    y_min = torch.where(rows_hit, ys, height).amin(dim=-1)
    y_max = torch.where(rows_hit, ys, -1).amax(dim=-1)
    return torch.stack((x_min, y_min, x_max, y_max), dim=-1).to(torch.int32)
