"""Plain ViT trunk (ViTDet style) used by EfficientTAM's image encoder.

A single-scale vision transformer: a stride-``patch_size`` patch embedding, an absolute position
embedding learnt at ``pretrain_img_size`` (with a class-token slot) and resized to the input
grid, then ``depth`` pre-norm blocks that attend either inside non-overlapping windows
(``window_block_indexes``) or globally. Only the output of the last global block is returned, so
the trunk feeds a one-level neck (:class:`~sam2.modeling.backbones.image_encoder.ViTDetNeck`).

Module and parameter names follow the official EfficientTAM checkpoints
(``image_encoder.trunk.blocks.{i}.attn.qkv`` ...).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, List, Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from sam2.modeling.backbones.utils import PatchEmbed, get_abs_pos, window_partition, window_unpartition
from sam2.modeling.sam2_utils import MLP, DropPath, LayerScale


class Attention(nn.Module):
    """Multi-head self-attention over a channels-last ``[B, H, W, C]`` map (no relative positions)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        n = H * W
        # [B, n, 3, heads, d] -> 3 x [B, heads, n, d]
        q, k, v = self.qkv(x).reshape(B, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, H, W, -1)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block; window attention when ``window_size > 0``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        window_size: int = 0,
        dropout: float = 0.0,
        init_values: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, num_layers=2, activation=act_layer)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.ls1(self.attn(x))
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        else:
            x = self.ls1(self.attn(x))
        x = shortcut + self.dropout(self.drop_path(x))
        return x + self.dropout(self.drop_path(self.ls2(self.mlp(self.norm2(x)))))


class ViT(nn.Module):
    """ViTDet-style plain ViT returning ``[B, embed_dim, H / patch, W / patch]`` maps.

    ``channel_list`` is ``[embed_dim]`` (one map: the last global block) unless
    ``return_interm_layers``, in which case every global block's output is returned.
    Arguments kept for config compatibility with the official class but without effect at
    inference: ``img_size``, ``use_rel_pos``, ``rel_pos_zero_init``, ``use_act_checkpoint``,
    ``weights_path``.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 14,
        window_block_indexes: Sequence[int] = (0, 1, 3, 4, 6, 7, 9, 10),
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        dropout: float = 0.0,
        weights_path: Optional[str] = None,
        return_interm_layers: bool = False,
        init_values: Optional[float] = None,
    ) -> None:
        super().__init__()
        if use_rel_pos:
            raise NotImplementedError("relative position embeddings are not part of EfficientTAM's ViT")
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            padding=(0, 0),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        if use_abs_pos:
            grid = pretrain_img_size // patch_size
            num_positions = grid * grid + (1 if pretrain_use_cls_token else 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None

        drop_rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        windowed = set(window_block_indexes)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                window_size=window_size if i in windowed else 0,
                dropout=dropout,
                init_values=init_values,
            )
            for i in range(depth)
        )
        self.full_attn_ids = [i for i in range(depth) if i not in windowed]
        self.return_interm_layers = return_interm_layers
        self.channel_list = [embed_dim] * len(self.full_attn_ids) if return_interm_layers else [embed_dim]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        outputs = []
        last = self.full_attn_ids[-1]
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == last or (self.return_interm_layers and i in self.full_attn_ids):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
