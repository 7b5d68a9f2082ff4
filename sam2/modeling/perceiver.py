"""EdgeTAM's 2D spatial perceiver: compresses each encoded memory frame to a few latent tokens.

A memory frame ``[B, C, H, W]`` becomes ``num_latents`` *global* latents, which cross-attend to the
whole map and carry no position (their positional encoding is zero), followed by
``num_latents_2d`` *2D* latents: the map is cut into a ``g x g`` grid of windows
(``g = sqrt(num_latents_2d)``), one latent attends to one window, and the latents keep the grid
layout, so they get the sine encoding of a ``g x g`` map. Both kinds share the same layers.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _feed_forward(dim: int, mult: float) -> nn.Sequential:
    """Pre-norm GELU MLP without biases (indices 0, 1, 3 hold the weights)."""
    hidden = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False)
    )


def _heads(x: Tensor, heads: int) -> Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C // heads]``."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``[B, heads, N, c]`` -> ``[B, N, heads * c]``."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


class PerceiverAttention(nn.Module):
    """Latents (queries) attend to inputs; an optional input position is added to keys and values."""

    def __init__(
        self, *, dim: int, dim_head: int = 64, heads: int = 8, dropout_p: float = 0.05, concat_kv_latents: bool = True
    ) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.dropout_p = dropout_p
        # also attend to the latents themselves (Flamingo's resampler); incompatible with ``pos``
        self.concat_kv_latents = concat_kv_latents

    def forward(self, latents: Tensor, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        latents = self.norm_latents(latents)
        x = self.norm_x(x)
        source = torch.cat((x, latents), dim=-2) if self.concat_kv_latents else x
        k, v = self.to_kv(source).chunk(2, dim=-1)
        q, k, v = _heads(self.to_q(latents), self.heads), _heads(k, self.heads), _heads(v, self.heads)
        if pos is not None:
            if self.concat_kv_latents:
                raise ValueError("an input position cannot be used with concat_kv_latents")
            pos = _heads(pos, self.heads)
            k = k + pos
            v = v + pos
        p = self.dropout_p if self.training else 0.0
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p)))


class Attention(nn.Module):
    """Pre-norm self-attention among the latents."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, dropout_p: float = 0.05) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.dropout_p = dropout_p

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = _heads(self.to_q(x), self.heads), _heads(k, self.heads), _heads(v, self.heads)
        p = self.dropout_p if self.training else 0.0
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p)))


class PerceiverEncoderLayer(nn.Module):
    """Cross-attention + MLP on the latents, then optionally self-attention + MLP (all residual)."""

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: float = 4,
        hidden_dropout_p: float = 0.0,
        attention_dropout_p: float = 0.0,
        concat_kv_latents: bool = False,
        use_self_attn: bool = False,
    ) -> None:
        super().__init__()
        self.attn = PerceiverAttention(
            dim=dim,
            dim_head=dim_head,
            heads=heads,
            dropout_p=attention_dropout_p,
            concat_kv_latents=concat_kv_latents,
        )
        self.ff = _feed_forward(dim, ff_mult)
        self.dropout = nn.Dropout(hidden_dropout_p)
        self.use_self_attn = use_self_attn
        if use_self_attn:
            self.self_attn = Attention(dim=dim, dim_head=dim_head, heads=heads, dropout_p=attention_dropout_p)
            self.self_ff = _feed_forward(dim, ff_mult)

    def forward(self, latents: Tensor, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        latents = self.dropout(latents + self.attn(latents, x, pos))
        latents = latents + self.ff(latents)
        if self.use_self_attn:
            latents = latents + self.self_attn(latents)
            latents = latents + self.self_ff(latents)
        return latents


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, H, W, C]`` -> ``[B * (H/window) * (W/window), window, window, C]``, windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


class PerceiverResampler(nn.Module):
    """Compress a ``[B, C, H, W]`` memory map (and its position) to ``[B, N, C]`` latent tokens.

    ``N = max(num_latents, 0) + max(num_latents_2d, 0)``; global latents come first. Returns
    ``(latents, pos)`` where ``pos`` is None when no input position is given.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 1,
        num_latents: int = -1,
        num_latents_2d: int = -1,
        ff_mult: float = 4,
        hidden_dropout_p: float = 0.1,
        attention_dropout_p: float = 0.05,
        pos_enc_at_key_value: bool = False,
        concat_kv_latents: bool = False,
        position_encoding: Optional[nn.Module] = None,
        use_self_attn: bool = False,
    ) -> None:
        super().__init__()
        self.num_latents = num_latents
        self.num_latents_2d = num_latents_2d
        if num_latents > 0:
            self.latents = nn.Parameter(torch.randn(num_latents, dim))
        if num_latents_2d > 0:
            self.grid = math.isqrt(num_latents_2d)
            if self.grid * self.grid != num_latents_2d:
                raise ValueError(f"num_latents_2d must be a square, got {num_latents_2d}")
            self.latents_2d = nn.Parameter(torch.randn(num_latents_2d, dim))
        self.position_encoding = position_encoding
        self.layers = nn.ModuleList(
            PerceiverEncoderLayer(
                dim=dim,
                dim_head=dim_head,
                heads=heads,
                ff_mult=ff_mult,
                hidden_dropout_p=hidden_dropout_p,
                attention_dropout_p=attention_dropout_p,
                concat_kv_latents=concat_kv_latents,
                use_self_attn=use_self_attn,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        # Kept for config compatibility: as in the official code, the global latents use the
        # input position whenever one is given, whatever this flag says.
        self.pos_enc_at_key_value = pos_enc_at_key_value

    @property
    def num_tokens(self) -> int:
        """Tokens per compressed memory frame."""
        return max(self.num_latents, 0) + max(self.num_latents_2d, 0)

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        latents, positions = [], []
        if self.num_latents > 0:
            lat, p = self._global(x, pos)
            latents.append(lat)
            positions.append(p)
        if self.num_latents_2d > 0:
            lat, p = self._windowed(x)
            latents.append(lat)
            positions.append(p)
        out = torch.cat(latents, dim=1)
        return out, None if pos is None else torch.cat(positions, dim=1)

    def _global(self, x: Tensor, pos: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Global latents over all ``H*W`` tokens; their output position is zero."""
        latents = self.latents.unsqueeze(0).expand(x.size(0), -1, -1)
        tokens = x.flatten(2).transpose(1, 2)
        kv_pos = None if pos is None else pos.flatten(2).transpose(1, 2)
        for layer in self.layers:
            latents = layer(latents, tokens, kv_pos)
        out_pos = None if pos is None else torch.zeros_like(latents)
        return self.norm(latents), out_pos

    def _windowed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One latent per window of a ``grid x grid`` partition; positions of a ``grid x grid`` map."""
        b, c, h, _ = x.shape
        latents = self.latents_2d.unsqueeze(0).expand(b, -1, -1).reshape(-1, 1, c)
        window = h // self.grid
        tokens = window_partition(x.permute(0, 2, 3, 1), window).flatten(1, 2)
        for layer in self.layers:
            latents = layer(latents, tokens)
        grid_map = latents.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
        pos = self.position_encoding(grid_map).flatten(2).transpose(1, 2)
        return self.norm(grid_map.flatten(2).transpose(1, 2)), pos
