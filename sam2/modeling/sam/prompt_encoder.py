"""Prompt encoder: turns clicks, boxes and low-res mask prompts into decoder tokens."""

from __future__ import annotations

from typing import Optional, Tuple, Type

import torch
from torch import Tensor, nn

from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.modeling.sam2_utils import LayerNorm2d

# Point label convention shared with the predictors.
PAD_LABEL = -1  # padding / "not a point"
NEG_LABEL, POS_LABEL = 0, 1  # negative / positive clicks
BOX_TL_LABEL, BOX_BR_LABEL = 2, 3  # box corners encoded as points


class PromptEncoder(nn.Module):
    """Embed sparse prompts (points, boxes) and dense prompts (masks) for the mask decoder.

    Sparse prompts become ``[B, N, embed_dim]`` tokens: a random-Fourier positional encoding of
    the coordinate plus a learned per-label embedding. A mask prompt (at 4x the image embedding
    resolution) is downscaled by a small conv stack to a dense ``[B, embed_dim, H, W]`` map; without
    one, a learned "no mask" vector is broadcast instead.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Tuple[int, int],
        input_image_size: Tuple[int, int],
        mask_in_chans: int,
        activation: Type[nn.Module] = nn.GELU,
    ) -> None:
        """
        Args:
            embed_dim: channel width of every produced embedding.
            image_embedding_size: ``(H, W)`` of the image embedding the decoder attends to.
            input_image_size: ``(H, W)`` of the (padded) network input, the frame of point coords.
            mask_in_chans: hidden width of the mask-downscaling conv stack.
            activation: activation class used in the mask-downscaling stack.
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # One learned offset per label: negative, positive, box top-left, box bottom-right.
        self.num_point_embeddings: int = 4
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        hidden = mask_in_chans // 4
        # Two stride-2 convs bring the mask from 4x down to the embedding resolution.
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden, kernel_size=2, stride=2),
            LayerNorm2d(hidden),
            activation(),
            nn.Conv2d(hidden, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of every image-embedding cell, ``[1, embed_dim, H, W]``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Encode ``[B, N, 2]`` pixel coords with ``[B, N]`` labels; optionally append a pad point."""
        points = points + 0.5  # pixel centers
        if pad:
            # Without a box, SAM appends one "not a point" token (as in training).
            pad_xy = torch.zeros((points.shape[0], 1, 2), device=points.device)
            pad_lbl = -torch.ones((labels.shape[0], 1), device=labels.device)
            points = torch.cat([points, pad_xy], dim=1)
            labels = torch.cat([labels, pad_lbl], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)

        is_pad = (labels == PAD_LABEL).unsqueeze(-1)
        emb = torch.where(is_pad, torch.zeros_like(emb) + self.not_a_point_embed.weight, emb)
        for label, table in enumerate(self.point_embeddings):
            hit = (labels == label).unsqueeze(-1)
            emb = torch.where(hit, emb + table.weight, emb)
        return emb

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """Encode ``[B, 4]`` xyxy boxes as two corner tokens each, ``[B, 2, embed_dim]``."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        emb[:, 0, :] += self.point_embeddings[BOX_TL_LABEL].weight
        emb[:, 1, :] += self.point_embeddings[BOX_BR_LABEL].weight
        return emb

    def _embed_masks(self, masks: Tensor) -> Tensor:
        """Downscale ``[B, 1, 4H, 4W]`` mask logits to ``[B, embed_dim, H, W]``."""
        return self.mask_downscaling(masks)

    def _get_batch_size(
        self,
        points: Optional[Tuple[Tensor, Tensor]],
        boxes: Optional[Tensor],
        masks: Optional[Tensor],
    ) -> int:
        """Batch size implied by the first prompt that is given (1 if none)."""
        if points is not None:
            return points[0].shape[0]
        for prompt in (boxes, masks):
            if prompt is not None:
                return prompt.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(
        self,
        points: Optional[Tuple[Tensor, Tensor]],
        boxes: Optional[Tensor],
        masks: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        """Embed the given prompts.

        Args:
            points: ``(coords [B, N, 2], labels [B, N])`` in input-image pixels, or None.
            boxes: ``[B, 4]`` xyxy boxes, or None.
            masks: ``[B, 1, 4H, 4W]`` mask logits, or None.

        Returns:
            sparse: ``[B, N_tokens, embed_dim]`` point/box tokens (points first, then box corners).
            dense: ``[B, embed_dim, H, W]`` mask embedding.
        """
        bs = self._get_batch_size(points, boxes, masks)
        sparse = torch.empty((bs, 0, self.embed_dim), device=self._get_device())
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
