"""Building blocks shared by the image backbones: windowing, patch embedding, absolute positions."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Split a ``[B, H, W, C]`` map into non-overlapping ``window_size`` squares.

    The map is zero-padded at the bottom/right when ``H`` or ``W`` is not a multiple of the window.

    Returns:
        The windows as ``[B * num_windows, window_size, window_size, C]`` (row-major window order
        per image) and the padded size ``(Hp, Wp)`` needed by :func:`window_unpartition`.
    """
    batch, height, width, channels = x.shape
    extra_h = -height % window_size
    extra_w = -width % window_size
    if extra_h or extra_w:
        x = F.pad(x, (0, 0, 0, extra_w, 0, extra_h))
    padded_h, padded_w = height + extra_h, width + extra_w
    rows, cols = padded_h // window_size, padded_w // window_size

    x = x.view(batch, rows, window_size, cols, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor,
    window_size: int,
    pad_hw: Tuple[int, int],
    hw: Tuple[int, int],
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: stitch windows back and drop the padding.

    Args:
        windows: ``[B * num_windows, window_size, window_size, C]``.
        window_size: side of each window.
        pad_hw: padded size ``(Hp, Wp)`` returned by the partition.
        hw: original size ``(H, W)``.

    Returns:
        The ``[B, H, W, C]`` map.
    """
    padded_h, padded_w = pad_hw
    height, width = hw
    rows, cols = padded_h // window_size, padded_w // window_size
    batch = windows.shape[0] // (rows * cols)

    x = windows.reshape(batch, rows, cols, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :]
    return x


class PatchEmbed(nn.Module):
    """Convolutional patch embedding producing a channels-last ``[B, H', W', C]`` map."""

    def __init__(
        self,
        kernel_size: Tuple[int, ...] = (7, 7),
        stride: Tuple[int, ...] = (4, 4),
        padding: Tuple[int, ...] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        """
        Args:
            kernel_size: kernel of the projection convolution.
            stride: stride of the projection convolution (the patch size).
            padding: padding of the projection convolution.
            in_chans: number of input image channels.
            embed_dim: number of output channels.
        """
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a ``[B, C, H, W]`` image into ``[B, H / stride, W / stride, embed_dim]``."""
        return self.proj(x).permute(0, 2, 3, 1)


def get_abs_pos(abs_pos: torch.Tensor, has_cls_token: bool, hw: Tuple[int, int]) -> torch.Tensor:
    """Absolute position embedding ``[1, N(+1), C]`` as a ``[1, H, W, C]`` map for an ``hw`` grid.

    Drops the class-token slot when ``has_cls_token`` and resizes the square grid it was learnt
    on with bicubic interpolation when it differs from ``hw`` (ViT trunks of EfficientTAM).
    """
    h, w = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    n = abs_pos.shape[1]
    size = math.isqrt(n)
    if size * size != n:
        raise ValueError(f"position embedding of {n} tokens is not a square grid")
    grid = abs_pos.reshape(1, size, size, -1)
    if size == h and size == w:
        return grid
    resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)
