"""SAM 2 image encoders: a trunk followed by an FPN-style neck (Hiera) or a one-level neck (ViT)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from sam2.modeling.sam2_utils import LayerNorm2d


class ImageEncoder(nn.Module):
    """Run ``trunk`` then ``neck`` and package the multi-scale features for SAM 2."""

    def __init__(self, trunk: nn.Module, neck: nn.Module, scalp: int = 0) -> None:
        """
        Args:
            trunk: backbone returning one feature map per stage (e.g. :class:`Hiera`).
            neck: module turning those maps into ``(features, position encodings)``.
            scalp: number of lowest-resolution levels to discard from the neck outputs.
        """
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        if self.trunk.channel_list != self.neck.backbone_channel_list:
            raise ValueError(
                "Channel dims of trunk and neck do not match. "
                f"Trunk: {self.trunk.channel_list}, neck: {self.neck.backbone_channel_list}"
            )

    def forward(self, sample: torch.Tensor) -> Dict[str, Union[torch.Tensor, List[torch.Tensor]]]:
        """Encode a ``[B, 3, H, W]`` batch.

        Returns a dict with ``backbone_fpn`` (neck maps, finest first), ``vision_pos_enc`` (their
        positional encodings) and ``vision_features`` (the coarsest kept map).
        """
        features, pos = self.neck(self.trunk(sample))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {
            "vision_features": features[-1],
            "vision_pos_enc": pos,
            "backbone_fpn": features,
        }


class FpnNeck(nn.Module):
    """Feature-pyramid neck without output convs.

    Every trunk level is projected to ``d_model`` channels by a lateral conv; the levels listed in
    ``fpn_top_down_levels`` additionally receive the upsampled (x2) result of the coarser level.
    Each output also gets its positional encoding.
    """

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: List[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: Optional[Sequence[int]] = None,
    ) -> None:
        """
        Args:
            position_encoding: module mapping a ``[B, C, H, W]`` map to its positional encoding.
            d_model: output channels of every level.
            backbone_channel_list: trunk channels per level, coarsest level first.
            kernel_size: kernel of the lateral convs.
            stride: stride of the lateral convs.
            padding: padding of the lateral convs.
            fpn_interp_model: ``F.interpolate`` mode for the top-down upsampling.
            fuse_type: ``"sum"`` or ``"avg"`` of lateral and top-down features.
            fpn_top_down_levels: output levels (0 = finest) that receive top-down features;
                ``None`` means all levels.
        """
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.backbone_channel_list = backbone_channel_list
        self.d_model = d_model
        self.convs = nn.ModuleList()
        for channels in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module(
                "conv",
                nn.Conv2d(
                    in_channels=channels,
                    out_channels=d_model,
                    kernel_size=kernel_size,
                    stride=stride,
                    padding=padding,
                ),
            )
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        if fpn_top_down_levels is None:
            fpn_top_down_levels = range(len(self.convs))
        self.fpn_top_down_levels = list(fpn_top_down_levels)

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample a coarser level by 2 (computed in fp32)."""
        return F.interpolate(
            x.to(dtype=torch.float32),
            scale_factor=2.0,
            mode=self.fpn_interp_model,
            align_corners=None if self.fpn_interp_model == "nearest" else False,
            antialias=False,
        )

    def forward(self, xs: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Fuse trunk maps ``xs`` (finest first); returns ``(features, pos)``, finest first."""
        num_levels = len(self.convs)
        if len(xs) != num_levels:
            raise ValueError(f"expected {num_levels} feature maps, got {len(xs)}")
        features: List[torch.Tensor] = [None] * num_levels  # type: ignore[list-item]
        pos: List[torch.Tensor] = [None] * num_levels  # type: ignore[list-item]

        # Walk from the coarsest level (handled by convs[0]) to the finest.
        coarser = None
        for level in reversed(range(num_levels)):
            fused = self.convs[num_levels - 1 - level](xs[level])
            if coarser is not None and level in self.fpn_top_down_levels:
                fused = fused + self._upsample(coarser)
                if self.fuse_type == "avg":
                    fused = fused / 2
            coarser = fused
            features[level] = fused
            pos[level] = self.position_encoding(fused).to(fused.dtype)
        return features, pos


class ViTDetNeck(nn.Module):
    """Neck of a plain (single-scale) ViT trunk, as in EfficientTAM.

    Each trunk map goes through ``conv_1x1`` (to ``d_model`` channels) then ``conv_3x3``, each
    followed by a channel LayerNorm (``norm_0`` / ``norm_1``) when ``neck_norm`` is set, in which
    case the convs have no bias. EfficientTAM configs use one map, so SAM 2 sees a single level.
    ``kernel_size``, ``stride`` and ``padding`` are accepted for config compatibility only.
    """

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: List[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        neck_norm: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.backbone_channel_list = backbone_channel_list
        self.position_encoding = position_encoding
        self.d_model = d_model
        with_norm = neck_norm is not None
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            layers = nn.Sequential()
            layers.add_module("conv_1x1", nn.Conv2d(dim, d_model, kernel_size=1, bias=not with_norm))
            if with_norm:
                layers.add_module("norm_0", LayerNorm2d(d_model))
            layers.add_module("conv_3x3", nn.Conv2d(d_model, d_model, kernel_size=3, padding=1, bias=not with_norm))
            if with_norm:
                layers.add_module("norm_1", LayerNorm2d(d_model))
            self.convs.append(layers)

    def forward(self, xs: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Project trunk maps ``xs``; returns ``(features, pos)`` in the same order."""
        if len(xs) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature maps, got {len(xs)}")
        features = [conv(x) for conv, x in zip(self.convs, xs)]
        pos = [self.position_encoding(f).to(f.dtype) for f in features]
        return features, pos
