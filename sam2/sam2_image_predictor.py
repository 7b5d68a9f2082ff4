"""Promptable single-image segmentation with SAM 2.

The image is embedded once (:meth:`SAM2ImagePredictor.set_image`); afterwards any number
of point / box / mask prompts can be decoded cheaply with :meth:`SAM2ImagePredictor.predict`.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL.Image import Image
from torch import Tensor

from sam2.modeling.sam2_base import SAM2Base
from sam2.precision import Precision, autocast_method
from sam2.utils.transforms import SAM2Transforms

# Point labels of a box's top-left and bottom-right corners in the prompt encoder.
_BOX_CORNER_LABELS = (2, 3)
# Low-res logits handed back to the caller are clamped to this range.
_LOGIT_CLAMP = 32.0

ArrayLike = Union[np.ndarray, Tensor]


class SAM2ImagePredictor:
    """Embed an image (or a batch of images) once, then predict masks for prompts.

    Args:
        sam_model: the SAM 2 model.
        mask_threshold: logit threshold used to binarise masks.
        max_hole_area: fill background holes up to this area in the low-res masks (0: off).
        max_sprinkle_area: remove foreground specks up to this area in the low-res masks (0: off).
    """

    def __init__(
        self,
        sam_model: SAM2Base,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.model = sam_model
        self._transforms = SAM2Transforms(
            resolution=self.model.image_size,
            mask_threshold=mask_threshold,
            max_hole_area=max_hole_area,
            max_sprinkle_area=max_sprinkle_area,
        )
        self.mask_threshold = mask_threshold
        # Spatial sizes of the stride-4, -8 and -16 backbone levels for this model's input size.
        size = self.model.image_size
        self._bb_feat_sizes = [(size // s, size // s) for s in (4, 8, 16)]
        self.reset_predictor()

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs: Any) -> SAM2ImagePredictor:
        """Build the model for a Hugging Face model id (needs ``huggingface_hub``)."""
        from sam2.build_sam import build_sam2_hf

        return cls(build_sam2_hf(model_id, **kwargs), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def precision(self) -> Precision:
        """The model's compute precision (:mod:`sam2.precision`; set by the builder's ``dtype``)."""
        return self.model.precision

    def reset_predictor(self) -> None:
        """Forget the current image(s) and their embeddings."""
        self._is_image_set = False
        self._features: Optional[dict[str, Any]] = None
        self._orig_hw: Optional[list[tuple[int, int]]] = None
        self._is_batch = False

    # ------------------------------------------------------------------ image embedding

    @torch.no_grad()
    @autocast_method
    def set_image(self, image: Union[np.ndarray, Image]) -> None:
        """Embed one RGB image (numpy HWC with values in [0, 255], or a PIL image)."""
        self.reset_predictor()
        if isinstance(image, np.ndarray):
            orig_hw = (int(image.shape[0]), int(image.shape[1]))
        elif isinstance(image, Image):
            width, height = image.size
            orig_hw = (height, width)
        else:
            raise NotImplementedError(f"unsupported image type {type(image).__name__}")
        batch = self._transforms(image)[None].to(self.device)
        self._embed(batch)
        self._orig_hw = [orig_hw]

    @torch.no_grad()
    @autocast_method
    def set_image_batch(self, image_list: list[np.ndarray]) -> None:
        """Embed a list of RGB numpy HWC images, for :meth:`predict_batch`."""
        self.reset_predictor()
        if not isinstance(image_list, list) or not all(isinstance(im, np.ndarray) for im in image_list):
            raise TypeError("image_list must be a list of HWC RGB numpy arrays")
        batch = self._transforms.forward_batch(image_list).to(self.device)
        self._embed(batch)
        self._orig_hw = [(int(im.shape[0]), int(im.shape[1])) for im in image_list]
        self._is_batch = True

    def _embed(self, batch: Tensor) -> None:
        """Run the backbone on ``[N, 3, S, S]`` and cache decoder-ready feature maps."""
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(batch.shape)}")
        logging.info("Computing image embeddings...")
        backbone_out = self.model.forward_image(batch)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            # The model saw this embedding on memory-less frames during video training.
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        num_images = batch.shape[0]
        # The model uses the last len(vision_feats) levels, which are the coarsest sizes.
        sizes = self._bb_feat_sizes[len(self._bb_feat_sizes) - len(vision_feats) :]
        maps = [feat.permute(1, 2, 0).view(num_images, -1, *size) for feat, size in zip(vision_feats, sizes)]
        self._features = {"image_embed": maps[-1], "high_res_feats": maps[:-1]}
        self._is_image_set = True

    def get_image_embedding(self) -> Tensor:
        """The cached ``[N, C, h, w]`` image embedding of the current image(s)."""
        if not self._is_image_set or self._features is None:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self._features["image_embed"]

    # ------------------------------------------------------------------ prediction

    def predict(
        self,
        point_coords: Optional[ArrayLike] = None,
        point_labels: Optional[ArrayLike] = None,
        box: Optional[ArrayLike] = None,
        mask_input: Optional[ArrayLike] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the image given to :meth:`set_image`.

        Args:
            point_coords: ``[N, 2]`` (or ``[B, N, 2]`` for B prompt sets) (x, y) points.
            point_labels: ``[N]`` (or ``[B, N]``) labels, 1 foreground / 0 background.
            box: ``[4]`` (or ``[B, 4]``) XYXY box.
            mask_input: ``[1, h, w]`` (or ``[B, 1, h, w]``) low-res logits from a previous
                prediction, with ``h = w = image_size // 4``.
            multimask_output: return 3 candidate masks instead of 1.
            return_logits: return mask logits instead of binary masks.
            normalize_coords: coordinates are pixels of the original image (else already in [0, 1]).

        Returns:
            masks ``[C, H, W]`` at the original image size, their predicted IoUs ``[C]`` and
            low-res logits ``[C, h, w]`` (with a leading B for batched prompt sets).
        """
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        return self._predict_numpy(
            point_coords,
            point_labels,
            box,
            mask_input,
            multimask_output,
            return_logits,
            normalize_coords,
            img_idx=-1,
        )

    def predict_batch(
        self,
        point_coords_batch: Optional[list[ArrayLike]] = None,
        point_labels_batch: Optional[list[ArrayLike]] = None,
        box_batch: Optional[list[ArrayLike]] = None,
        mask_input_batch: Optional[list[ArrayLike]] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for every image given to :meth:`set_image_batch` (one prompt set each)."""
        if not self._is_batch:
            raise RuntimeError("predict_batch needs images set with .set_image_batch(...)")
        if not self._is_image_set or self._features is None:
            raise RuntimeError("An image must be set with .set_image_batch(...) before mask prediction.")

        def pick(items: Optional[list[ArrayLike]], idx: int) -> Optional[ArrayLike]:
            return None if items is None else items[idx]

        all_masks, all_ious, all_low_res = [], [], []
        for idx in range(len(self._features["image_embed"])):
            masks, ious, low_res = self._predict_numpy(
                pick(point_coords_batch, idx),
                pick(point_labels_batch, idx),
                pick(box_batch, idx),
                pick(mask_input_batch, idx),
                multimask_output,
                return_logits,
                normalize_coords,
                img_idx=idx,
            )
            all_masks.append(masks)
            all_ious.append(ious)
            all_low_res.append(low_res)
        return all_masks, all_ious, all_low_res

    def _predict_numpy(
        self,
        point_coords: Optional[ArrayLike],
        point_labels: Optional[ArrayLike],
        box: Optional[ArrayLike],
        mask_input: Optional[ArrayLike],
        multimask_output: bool,
        return_logits: bool,
        normalize_coords: bool,
        img_idx: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prepare prompts, decode, and return numpy results without the singleton batch dim."""
        mask_t, coords_t, labels_t, box_t = self._prep_prompts(
            point_coords, point_labels, box, mask_input, normalize_coords, img_idx=img_idx
        )
        masks, ious, low_res = self._predict(
            coords_t,
            labels_t,
            box_t,
            mask_t,
            multimask_output,
            return_logits=return_logits,
            img_idx=img_idx,
        )

        def to_numpy(x: Tensor) -> np.ndarray:
            return x.squeeze(0).float().detach().cpu().numpy()

        return to_numpy(masks), to_numpy(ious), to_numpy(low_res)

    def _prep_prompts(
        self,
        point_coords: Optional[ArrayLike],
        point_labels: Optional[ArrayLike],
        box: Optional[ArrayLike],
        mask_logits: Optional[ArrayLike],
        normalize_coords: bool,
        img_idx: int = -1,
    ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """Convert user prompts to tensors in the model's input frame, with a batch dim."""
        if self._orig_hw is None:
            raise RuntimeError("An image must be set before preparing prompts.")
        orig_hw = self._orig_hw[img_idx]
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            coords = torch.as_tensor(point_coords, dtype=torch.float, device=self.device)
            coords = self._transforms.transform_coords(coords, normalize=normalize_coords, orig_hw=orig_hw)
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)
            if coords.dim() == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            box_t = torch.as_tensor(box, dtype=torch.float, device=self.device)
            boxes = self._transforms.transform_boxes(box_t, normalize=normalize_coords, orig_hw=orig_hw)
        if mask_logits is not None:
            masks = torch.as_tensor(mask_logits, dtype=torch.float, device=self.device)
            if masks.dim() == 3:
                masks = masks[None]
        return masks, coords, labels, boxes

    @torch.no_grad()
    @autocast_method
    def _predict(
        self,
        point_coords: Optional[Tensor],
        point_labels: Optional[Tensor],
        boxes: Optional[Tensor] = None,
        mask_input: Optional[Tensor] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode already-transformed prompt tensors on image ``img_idx``.

        Boxes are encoded as two labelled corner points placed before any clicks.
        Returns masks ``[B, C, H, W]`` at the original size, IoUs ``[B, C]`` and clamped
        low-res logits ``[B, C, h, w]``.
        """
        if not self._is_image_set or self._features is None or self._orig_hw is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

        points = None if point_coords is None else (point_coords, point_labels)
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([_BOX_CORNER_LABELS], dtype=torch.int, device=boxes.device).repeat(
                corners.size(0), 1
            )
            if points is None:
                points = (corners, corner_labels)
            else:
                points = (
                    torch.cat([corners, points[0]], dim=1),
                    torch.cat([corner_labels, points[1]], dim=1),
                )

        sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        # Several prompt sets on one image: the decoder repeats the image embedding.
        multiple_prompt_sets = points is not None and points[0].shape[0] > 1
        high_res_features = [level[img_idx].unsqueeze(0) for level in self._features["high_res_feats"]]
        low_res_masks, iou_predictions, _, _ = self.model.sam_mask_decoder(
            image_embeddings=self._features["image_embed"][img_idx].unsqueeze(0),
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=multiple_prompt_sets,
            high_res_features=high_res_features,
        )
        masks = self._transforms.postprocess_masks(low_res_masks, self._orig_hw[img_idx])
        low_res_masks = torch.clamp(low_res_masks, -_LOGIT_CLAMP, _LOGIT_CLAMP)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions, low_res_masks
