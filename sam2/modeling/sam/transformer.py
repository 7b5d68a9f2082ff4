"""Attention layers of the SAM 2 mask decoder and memory attention.

``TwoWayTransformer`` lets the prompt/output tokens and the image embedding attend to each other;
``Attention`` is a multi-head attention with an optional channel bottleneck; ``RoPEAttention`` adds
2D axial rotary position encoding (used by the memory attention).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam2.modeling.position_encoding import apply_rotary_enc, apply_rotary_enc_per_frame, compute_axial_cis
from sam2.modeling.sam2_utils import MLP


class TwoWayTransformer(nn.Module):
    """Stack of ``TwoWayAttentionBlock`` followed by a final token-to-image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: Type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        """
        Args:
            depth: number of two-way blocks.
            embedding_dim: channel width of tokens and image embedding.
            num_heads: attention heads (must divide the internal attention width).
            mlp_dim: hidden width of each block's token MLP.
            activation: activation class of the token MLP.
            attention_downsample_rate: channel bottleneck factor of the cross-attentions.
        """
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Run the decoder transformer.

        Args:
            image_embedding: ``[B, C, H, W]`` image features.
            image_pe: ``[B, C, H, W]`` positional encoding of the image features.
            point_embedding: ``[B, N, C]`` query tokens; also used as their positional encoding.

        Returns:
            ``(tokens [B, N, C], image tokens [B, H*W, C])`` after the transformer.
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding

        for block in self.layers:
            queries, keys = block(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)

        attn = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attn -> token-to-image attn -> token MLP -> image-to-token attn (post-norm each)."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: Type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        """
        Args:
            embedding_dim: channel width.
            num_heads: attention heads.
            mlp_dim: hidden width of the token MLP.
            activation: activation class of the token MLP.
            attention_downsample_rate: channel bottleneck of the two cross-attentions.
            skip_first_layer_pe: first block only: plain self-attention without PE or residual.
        """
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> Tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            # The very first block replaces the tokens (they already carry their PE).
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention whose q/k/v live in a ``embedding_dim // downsample_rate`` space.

    Keys and values may come from a different width (``kv_in_dim``), e.g. memory features.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate.")

        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _separate_heads(self, x: Tensor, num_heads: int) -> Tensor:
        """``[B, N, C]`` -> ``[B, heads, N, C // heads]``."""
        b, n, c = x.shape
        return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)

    def _recombine_heads(self, x: Tensor) -> Tensor:
        """``[B, heads, N, c]`` -> ``[B, N, heads * c]``."""
        b, heads, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, heads * c)

    def _project(self, q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Input projections, split into heads."""
        return (
            self._separate_heads(self.q_proj(q), self.num_heads),
            self._separate_heads(self.k_proj(k), self.num_heads),
            self._separate_heads(self.v_proj(v), self.num_heads),
        )

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """Scaled dot-product attention over heads, then merge heads and project out.

        ``attn_mask`` is a boolean mask broadcastable to ``[B, heads, N_q, N_k]`` (True = attend).
        """
        p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.out_proj(self._recombine_heads(out))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return self._attend(*self._project(q, k, v), attn_mask=attn_mask)


class RoPEAttention(Attention):
    """``Attention`` with 2D axial rotary position encoding on queries and keys.

    Queries are assumed to be a square ``h x w`` token grid (``h = w = sqrt(N_q)``). For
    cross-attention to memories, keys hold several such grids back to back (``rope_k_repeat``),
    optionally followed by ``num_k_exclude_rope`` tokens (object pointers) that get no rotation.
    """

    def __init__(
        self,
        *args,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: Tuple[int, int] = (64, 64),
        **kwargs,
    ) -> None:
        """
        Args:
            rope_theta: RoPE base frequency.
            rope_k_repeat: tile the query-grid rotations over keys longer than the queries.
            feat_sizes: ``(w, h)`` of the grid to precompute rotations for (others computed lazily).
            *args, **kwargs: forwarded to ``Attention``.
        """
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        # Complex rotations; a plain attribute (not a buffer) so it stays out of the state_dict and
        # is never cast by ``module.to(dtype)``. It is moved to the query device when used.
        self.freqs_cis = self.compute_cis(end_x=feat_sizes[0], end_y=feat_sizes[1])

    def compute_cis(self, end_x: int, end_y: int) -> Tensor:
        """Rotations for an ``end_x * end_y`` grid at this layer's head width."""
        return compute_axial_cis(
            dim=self.internal_dim // self.num_heads, end_x=end_x, end_y=end_y, theta=self.rope_theta
        )

    def _freqs_for(self, num_tokens: int, device: torch.device) -> Tensor:
        """Rotations for a square grid of ``num_tokens`` tokens, recomputed if the size changed."""
        if self.freqs_cis.shape[0] != num_tokens:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"RoPE needs a square query grid, got {num_tokens} tokens")
            self.freqs_cis = self.compute_cis(end_x=side, end_y=side)
        if self.freqs_cis.device != device:
            self.freqs_cis = self.freqs_cis.to(device)
        return self.freqs_cis

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        num_k_exclude_rope: int = 0,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        q, k, v = self._project(q, k, v)
        freqs = self._freqs_for(q.shape[-2], q.device)
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError("keys longer than queries need rope_k_repeat=True")

        n_rope = k.shape[-2] - num_k_exclude_rope
        q, k_rot = apply_rotary_enc(q, k[:, :, :n_rope], freqs_cis=freqs, repeat_freqs_k=self.rope_k_repeat)
        if num_k_exclude_rope > 0:
            k = torch.cat([k_rot, k[:, :, n_rope:]], dim=-2)
        else:
            k = k_rot
        return self._attend(q, k, v, attn_mask=attn_mask)


class RoPEAttentionv2(Attention):
    """EdgeTAM's cross-attention to compressed memories, with fixed query and key RoPE grids.

    Queries are a ``q_sizes`` grid (the current frame's stride-16 map). Keys are ``rope_k_repeat``
    memory frames of equal length, each ending with a ``k_sizes`` grid of 2D latents (rotated by
    their own grid positions; the global latents before them are not rotated), followed by
    ``num_k_exclude_rope`` object-pointer tokens that get no rotation. Padded (masked) frames may
    be included in ``rope_k_repeat``: they are rotated like the others and hidden by ``attn_mask``.
    """

    def __init__(
        self,
        *args,
        rope_theta: float = 10000.0,
        q_sizes: Tuple[int, int] = (32, 32),
        k_sizes: Tuple[int, int] = (32, 32),
        **kwargs,
    ) -> None:
        """
        Args:
            rope_theta: RoPE base frequency.
            q_sizes: ``(w, h)`` of the query grid (``image_size / 16`` per side).
            k_sizes: ``(w, h)`` of each memory frame's 2D latent grid.
            *args, **kwargs: forwarded to ``Attention``.
        """
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        dim = self.internal_dim // self.num_heads
        # plain attributes (not buffers): out of the state_dict, never cast by ``module.to(dtype)``
        self.freqs_cis_q = compute_axial_cis(dim=dim, end_x=q_sizes[0], end_y=q_sizes[1], theta=rope_theta)
        self.freqs_cis_k = compute_axial_cis(dim=dim, end_x=k_sizes[0], end_y=k_sizes[1], theta=rope_theta)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        num_k_exclude_rope: int = 0,
        rope_k_repeat: int = -1,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """``rope_k_repeat``: number of memory frames in ``k``; -1 means every rotated key is a
        2D latent (frames without global latents)."""
        q, k, v = self._project(q, k, v)
        if self.freqs_cis_q.device != q.device:
            self.freqs_cis_q = self.freqs_cis_q.to(q.device)
            self.freqs_cis_k = self.freqs_cis_k.to(q.device)
        if q.shape[-2] != self.freqs_cis_q.shape[0]:
            raise ValueError(
                f"{q.shape[-2]} query tokens for a {self.freqs_cis_q.shape[0]}-token RoPE grid "
                "(set q_sizes to image_size / 16)"
            )
        q_c = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
        q = torch.view_as_real(q_c * self.freqs_cis_q).flatten(3).type_as(q)

        n_rope = k.shape[-2] - num_k_exclude_rope
        frames = rope_k_repeat if rope_k_repeat >= 0 else n_rope // self.freqs_cis_k.shape[0]
        k_rot = apply_rotary_enc_per_frame(k[:, :, :n_rope], self.freqs_cis_k, frames)
        if num_k_exclude_rope > 0:
            k = torch.cat([k_rot, k[:, :, n_rope:]], dim=-2)
        else:
            k = k_rot
        return self._attend(q, k, v, attn_mask=attn_mask)
