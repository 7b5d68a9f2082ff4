"""Memory encoder: fuses a frame's features with its predicted mask into a memory entry."""

from __future__ import annotations

import math
from typing import Dict, List, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam2.modeling.sam2_utils import DropPath, LayerNorm2d, get_clones


class MaskDownSampler(nn.Module):
    """Reduce a mask by ``total_stride`` with repeated strided convs, then project to ``embed_dim``.

    Every conv divides the resolution by ``stride`` and multiplies the channels by ``stride**2``,
    followed by a channel LayerNorm and the activation.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: Type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        num_stages = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_stages != total_stride:
            raise ValueError("total_stride must be a power of stride")
        self.encoder = nn.Sequential()
        chans = 1
        for _ in range(num_stages):
            nxt = chans * stride**2
            self.encoder.append(
                nn.Conv2d(chans, nxt, kernel_size=kernel_size, stride=stride, padding=padding)
            )
            self.encoder.append(LayerNorm2d(nxt))
            self.encoder.append(activation())
            chans = nxt
        self.encoder.append(nn.Conv2d(chans, embed_dim, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, channel LayerNorm, pointwise MLP (as Linear), layer scale.

    The pointwise MLP runs channels-last with ``nn.Linear``; the residual is added in NCHW.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim), requires_grad=True)
            if layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # NCHW -> NHWC
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class Fuser(nn.Module):
    """Optional 1x1 input projection followed by ``num_layers`` copies of ``layer``."""

    def __init__(
        self, layer: nn.Module, num_layers: int, dim: int | None = None, input_projection: bool = False
    ) -> None:
        super().__init__()
        self.proj: nn.Module = nn.Identity()
        self.layers = get_clones(layer, num_layers)
        if input_projection:
            if dim is None:
                raise ValueError("input_projection needs dim")
            self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode (pixel features, mask) into memory features and their positional encoding."""

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: nn.Module,
        fuser: nn.Module,
        position_encoding: nn.Module,
        in_dim: int = 256,
    ) -> None:
        """
        Args:
            out_dim: channel width of the memory features.
            mask_downsampler: brings the full-resolution mask to the feature resolution.
            fuser: conv blocks mixing pixel features with the mask embedding.
            position_encoding: module giving the PE of the output features.
            in_dim: channel width of the pixel features.
        """
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj: nn.Module = (
            nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()
        )

    def forward(
        self, pix_feat: Tensor, masks: Tensor, skip_mask_sigmoid: bool = False
    ) -> Dict[str, Union[Tensor, List[Tensor]]]:
        """Fuse ``[B, C, H, W]`` features with ``[B, 1, 16H, 16W]`` mask logits (or probabilities).

        Returns ``{"vision_features": [B, out_dim, H, W], "vision_pos_enc": [pos]}``.
        """
        if not skip_mask_sigmoid:
            # Probabilities look closer to the binary masks seen in training than raw logits.
            masks = F.sigmoid(masks)
        masks = self.mask_downsampler(masks)

        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}
