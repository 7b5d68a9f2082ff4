"""Input/output transforms of the SAM 2 image predictor.

Images are resized (bilinear, antialiased) to a square ``resolution`` and normalised with the
ImageNet statistics; prompts are mapped into that square input frame; output mask logits are
optionally cleaned (hole filling / sprinkle removal) and resized back to the original image.
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL.Image import Image
from torch import Tensor, nn

from sam2.utils.mask_postprocess import get_connected_components

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Union[np.ndarray, Image]


def image_to_tensor(image: ImageLike) -> Tensor:
    """HWC image (numpy or PIL) -> ``[C, H, W]`` float32; uint8 values are scaled to [0, 1]."""
    if isinstance(image, Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or PIL image, got {type(image).__name__}")
    array = image[:, :, None] if image.ndim == 2 else image
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float32).div(255)
    return tensor.to(torch.float32)


class SAM2Transforms(nn.Module):
    """Pre-/post-processing between user images/prompts and the model's square input frame."""

    def __init__(
        self,
        resolution: int,
        mask_threshold: float,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        """
        Args:
            resolution: side of the square model input (the model's ``image_size``).
            mask_threshold: logit threshold separating foreground from background.
            max_hole_area: fill background components up to this area (0 disables).
            max_sprinkle_area: remove foreground components up to this area (0 disables).
        """
        super().__init__()
        self.resolution = resolution
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.mean = list(IMAGENET_MEAN)
        self.std = list(IMAGENET_STD)

    def _resize_normalize(self, image: Tensor) -> Tensor:
        """``[C, H, W]`` -> ``[C, res, res]``, antialiased bilinear resize then normalisation."""
        size = (self.resolution, self.resolution)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        mean = torch.as_tensor(self.mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return (image - mean) / std

    def __call__(self, x: ImageLike) -> Tensor:
        """One HWC image (numpy or PIL) -> normalised ``[3, res, res]`` tensor."""
        return self._resize_normalize(image_to_tensor(x))

    def forward_batch(self, img_list: list[ImageLike]) -> Tensor:
        """A list of HWC images -> normalised ``[N, 3, res, res]`` batch."""
        return torch.stack([self(img) for img in img_list], dim=0)

    def transform_coords(
        self, coords: Tensor, normalize: bool = False, orig_hw: Optional[tuple[int, int]] = None
    ) -> Tensor:
        """Map ``[..., 2]`` (x, y) coordinates into the model's input frame.

        With ``normalize=True`` the coordinates are in pixels of an image of size ``orig_hw``;
        otherwise they are already normalised to [0, 1].
        """
        if normalize:
            if orig_hw is None:
                raise ValueError("orig_hw is required to normalize pixel coordinates")
            h, w = orig_hw
            coords = coords.clone()
            coords[..., 0] = coords[..., 0] / w
            coords[..., 1] = coords[..., 1] / h
        return coords * self.resolution

    def transform_boxes(
        self, boxes: Tensor, normalize: bool = False, orig_hw: Optional[tuple[int, int]] = None
    ) -> Tensor:
        """Map ``[B, 4]`` XYXY boxes into the model's input frame as ``[B, 2, 2]`` corner points."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), normalize, orig_hw)

    def postprocess_masks(self, masks: Tensor, orig_hw: tuple[int, int]) -> Tensor:
        """Clean ``[B, C, h, w]`` mask logits (optional) and resize them to ``orig_hw``."""
        masks = masks.float()
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            masks = self._remove_small_regions(masks)
        return F.interpolate(masks, orig_hw, mode="bilinear", align_corners=False)

    def _remove_small_regions(self, masks: Tensor) -> Tensor:
        """Fill small background holes and drop small foreground sprinkles.

        If connected components cannot be computed (e.g. a missing compiled extension), the
        masks are returned unchanged with a warning, as this step only polishes results.
        """
        original = masks
        flat = masks.flatten(0, 1).unsqueeze(1)  # every mask as a 1-channel image
        try:
            if self.max_hole_area > 0:
                labels, areas = get_connected_components(flat <= self.mask_threshold)
                is_hole = ((labels > 0) & (areas <= self.max_hole_area)).reshape_as(masks)
                masks = torch.where(is_hole, self.mask_threshold + 10.0, masks)
            if self.max_sprinkle_area > 0:
                labels, areas = get_connected_components(flat > self.mask_threshold)
                is_sprinkle = ((labels > 0) & (areas <= self.max_sprinkle_area)).reshape_as(masks)
                masks = torch.where(is_sprinkle, self.mask_threshold - 10.0, masks)
        except Exception as err:  # noqa: BLE001  (post-processing is best effort)
            warnings.warn(
                f"{err}\n\nSkipping mask post-processing (hole filling / sprinkle removal); "
                "predictions are still valid without it.",
                category=UserWarning,
                stacklevel=2,
            )
            return original
        return masks
