"""Hiera image backbone (hierarchical ViT with windowed attention and query pooling).

Reference: "Hiera: A Hierarchical Vision Transformer without the Bells-and-Whistles",
https://arxiv.org/abs/2306.00989, with the windowed absolute positional embedding of
https://arxiv.org/abs/2311.05613.

All tensors inside the trunk are channels-last ``[B, H, W, C]``; the trunk outputs are
channels-first ``[B, C, H, W]`` maps, one per stage (highest resolution first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from iopath.common.file_io import g_pathmgr
from torch import nn

from sam2.modeling.backbones.utils import PatchEmbed, window_partition, window_unpartition
from sam2.modeling.sam2_utils import MLP, DropPath


def do_pool(x: torch.Tensor, pool: Optional[nn.Module], norm: Optional[nn.Module] = None) -> torch.Tensor:
    """Apply a channels-first pooling module to a channels-last ``[B, H, W, C]`` map."""
    if pool is None:
        return x
    x = pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    if norm:
        x = norm(x)
    return x


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be pooled to downsample the output."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        q_pool: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens of each ``[B, H, W, C]`` map; returns ``[B, H', W', dim_out]``."""
        batch, height, width, _ = x.shape
        tokens = height * width
        # [B, L, 3, heads, head_dim] -> three [B, L, heads, head_dim] tensors
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).unbind(2)

        if self.q_pool:
            # Pool the query grid; the output then has the pooled resolution.
            q = do_pool(q.reshape(batch, height, width, -1), self.q_pool)
            height, width = q.shape[1], q.shape[2]
            q = q.reshape(batch, height * width, self.num_heads, -1)

        # SDPA works on [B, heads, L, head_dim].
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block of Hiera, optionally windowed and/or downsampling.

    When ``dim != dim_out`` the residual path is projected (and pooled along with the queries
    when ``q_stride`` is set) so that the block can change both width and resolution.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_layer: Union[Callable[[int], nn.Module], str] = "LayerNorm",
        q_stride: Optional[Tuple[int, int]] = None,
        act_layer: Type[nn.Module] = nn.GELU,
        window_size: int = 0,
    ) -> None:
        """
        Args:
            dim: input channels.
            dim_out: output channels.
            num_heads: attention heads.
            mlp_ratio: hidden width of the MLP relative to ``dim_out``.
            drop_path: stochastic depth rate.
            norm_layer: norm constructor, or the name of a ``torch.nn`` norm (built with eps=1e-6).
            q_stride: query pooling stride; ``None`` keeps the resolution.
            act_layer: MLP activation.
            window_size: attention window side; 0 means global attention.
        """
        super().__init__()
        if isinstance(norm_layer, str):
            norm_layer = partial(getattr(nn, norm_layer), eps=1e-6)

        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False) if q_stride else None

        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = MLP(
            dim_out,
            int(dim_out * mlp_ratio),
            dim_out,
            num_layers=2,
            activation=act_layer,
        )
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block on a ``[B, H, W, dim]`` map."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = do_pool(self.proj(x), self.pool)

        window = self.window_size
        if window > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, window)

        x = self.attn(x)

        if window > 0:
            if self.q_stride:
                # Query pooling shrank every window; unpartition at the pooled resolution.
                window = window // self.q_stride[0]
                height, width = shortcut.shape[1], shortcut.shape[2]
                padded_hw = (height + (-height % window), width + (-width % window))
            x = window_unpartition(x, window, padded_hw, (height, width))

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@dataclass(frozen=True)
class _BlockSpec:
    """Configuration of one Hiera block, derived from the stage layout."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    q_stride: Optional[Tuple[int, int]]


def _plan_blocks(
    embed_dim: int,
    num_heads: int,
    stage_ends: Sequence[int],
    q_pool_blocks: Sequence[int],
    q_stride: Tuple[int, int],
    dim_mul: float,
    head_mul: float,
    window_spec: Sequence[int],
    global_att_blocks: Optional[Sequence[int]],
) -> List[_BlockSpec]:
    """Derive each block's widths, heads, window and pooling from the stage description.

    The first block of a stage widens the features and pools the queries, but still attends with
    the window size of the previous stage (its input lives at the previous resolution).
    """
    specs = []
    stage = 0
    for i in range(stage_ends[-1] + 1):
        window = window_spec[stage]
        if global_att_blocks is not None and i in global_att_blocks:
            window = 0
        dim_out = embed_dim
        if i - 1 in stage_ends:
            dim_out = int(embed_dim * dim_mul)
            num_heads = int(num_heads * head_mul)
            stage += 1
        specs.append(
            _BlockSpec(
                dim=embed_dim,
                dim_out=dim_out,
                num_heads=num_heads,
                window_size=window,
                q_stride=q_stride if i in q_pool_blocks else None,
            )
        )
        embed_dim = dim_out
    return specs


class Hiera(nn.Module):
    """Hierarchical vision transformer trunk used as the SAM 2 image encoder."""

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: Tuple[int, int] = (2, 2),
        stages: Tuple[int, ...] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: Tuple[int, int] = (14, 14),
        window_spec: Tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: Optional[Tuple[int, ...]] = (12, 16, 20),
        weights_path: Optional[str] = None,
        return_interm_layers: bool = True,
    ) -> None:
        """
        Args:
            embed_dim: width of the first stage.
            num_heads: attention heads of the first stage.
            drop_path_rate: final stochastic depth rate (linearly increasing over blocks).
            q_pool: number of stage transitions that downsample by query pooling.
            q_stride: pooling stride at those transitions.
            stages: number of blocks per stage.
            dim_mul: width multiplier at each stage transition.
            head_mul: head-count multiplier at each stage transition.
            window_pos_embed_bkg_spatial_size: size of the learned background positional embedding
                (interpolated to the feature size).
            window_spec: attention window size per stage.
            global_att_blocks: indices of blocks that use global attention.
            weights_path: optional checkpoint loaded (non-strictly) into the trunk.
            return_interm_layers: return every stage's output instead of only the last one.
        """
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("stages and window_spec must have the same length")
        self.window_spec = window_spec
        self.q_stride = q_stride
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool <= len(self.stage_ends) - 1:
            raise ValueError(f"q_pool must be in [0, {len(self.stage_ends) - 1}], got {q_pool}")
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers
        self.global_att_blocks = global_att_blocks

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)

        # Windowed absolute positional embedding: a coarse background map interpolated to the
        # feature size plus a per-window embedding tiled over it.
        self.window_pos_embed_bkg_spatial_size = window_pos_embed_bkg_spatial_size
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        specs = _plan_blocks(
            embed_dim,
            num_heads,
            self.stage_ends,
            self.q_pool_blocks,
            q_stride,
            dim_mul,
            head_mul,
            window_spec,
            global_att_blocks,
        )
        drop_rates = torch.linspace(0, drop_path_rate, len(specs), device="cpu").tolist()
        self.blocks = nn.ModuleList(
            MultiScaleBlock(
                dim=spec.dim,
                dim_out=spec.dim_out,
                num_heads=spec.num_heads,
                drop_path=rate,
                q_stride=spec.q_stride,
                window_size=spec.window_size,
            )
            for spec, rate in zip(specs, drop_rates)
        )

        # Channels of the returned maps, lowest resolution first (the order FpnNeck expects).
        if return_interm_layers:
            self.channel_list = [self.blocks[i].dim_out for i in reversed(self.stage_ends)]
        else:
            self.channel_list = [self.blocks[-1].dim_out]

        if weights_path is not None:
            with g_pathmgr.open(weights_path, "rb") as f:
                checkpoint = torch.load(f, map_location="cpu")
            result = self.load_state_dict(checkpoint, strict=False)
            logging.info("loading Hiera: %s", result)

    def _get_pos_embed(self, hw: Tuple[int, int]) -> torch.Tensor:
        """Positional embedding for an ``hw`` feature map, channels-last ``[1, H, W, C]``."""
        height, width = hw
        window = self.pos_embed_window
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        reps = (1, 1, height // window.shape[-2], width // window.shape[-1])
        return (background + window.tile(reps)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encode a ``[B, 3, H, W]`` image; returns ``[B, C_i, H_i, W_i]`` maps, finest first."""
        x = self.patch_embed(x)
        x = x + self._get_pos_embed(x.shape[1:3])

        last = self.stage_ends[-1]
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == last or (self.return_interm_layers and i in self.stage_ends):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def get_layer_id(self, layer_name: str) -> int:
        """Layer index of a parameter name, for layer-wise learning-rate decay (BEiT style)."""
        num_layers = self.get_num_layers()
        if "rel_pos" in layer_name:
            return num_layers + 1
        if "pos_embed" in layer_name or "patch_embed" in layer_name:
            return 0
        if "blocks" in layer_name:
            return int(layer_name.split("blocks")[1].split(".")[1]) + 1
        return num_layers + 1

    def get_num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)
