"""Memory attention: conditions current-frame features on the memory bank of past frames.

Supports an optional per-token scaling of the cross-attention keys (``memory_key_scale``), used by
SAM2Long to weight memory entries; without it the computation is exactly SAM 2's.
"""

from __future__ import annotations

from typing import List, Optional, Union

from torch import Tensor, nn

from sam2.modeling.sam.transformer import RoPEAttention, RoPEAttentionv2
from sam2.modeling.sam2_utils import get_activation_fn, get_clones


class MemoryAttentionLayer(nn.Module):
    """Pre-norm transformer layer: self-attention, cross-attention to memory, feed-forward MLP."""

    def __init__(
        self,
        activation: str,
        cross_attention: nn.Module,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
    ) -> None:
        """
        Args:
            activation: MLP activation name (``relu``/``gelu``/``glu``).
            cross_attention: attention module from current tokens to memory tokens.
            d_model: token width.
            dim_feedforward: MLP hidden width.
            dropout: dropout rate of the residual branches and MLP.
            pos_enc_at_attn: add the query PE to q/k of the self-attention.
            pos_enc_at_cross_attn_keys: add the memory PE to the cross-attention keys.
            pos_enc_at_cross_attn_queries: add the query PE to the cross-attention queries.
            self_attention: attention module among current tokens.
        """
        super().__init__()
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.dropout_value = dropout
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)

        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

        self.activation_str = activation
        self.activation = get_activation_fn(activation)

        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    def _forward_sa(self, tgt: Tensor, query_pos: Optional[Tensor]) -> Tensor:
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        return tgt + self.dropout1(self.self_attn(qk, qk, v=x))

    def _forward_ca(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Optional[Tensor],
        pos: Optional[Tensor],
        num_k_exclude_rope: int = 0,
        memory_key_scale: Optional[Tensor] = None,
        memory_key_mask: Optional[Tensor] = None,
        rope_k_repeat: int = -1,
    ) -> Tensor:
        extra = {}
        if memory_key_mask is not None:
            # [B, N_mem] -> [B, 1 (heads), 1 (queries), N_mem] for scaled_dot_product_attention.
            extra["attn_mask"] = memory_key_mask[:, None, None, :]
        if isinstance(self.cross_attn_image, RoPEAttentionv2):
            # EdgeTAM: keys are memory frames of latents (2D ones rotated per frame) + pointers.
            extra["num_k_exclude_rope"] = num_k_exclude_rope
            extra["rope_k_repeat"] = rope_k_repeat
        elif num_k_exclude_rope > 0:
            if not isinstance(self.cross_attn_image, RoPEAttention):
                raise TypeError("num_k_exclude_rope requires a RoPEAttention cross-attention")
            extra["num_k_exclude_rope"] = num_k_exclude_rope

        x = self.norm2(tgt)
        q = x + query_pos if self.pos_enc_at_cross_attn_queries else x
        k = memory + pos if self.pos_enc_at_cross_attn_keys else memory
        if memory_key_scale is not None:
            k = k * memory_key_scale
        return tgt + self.dropout2(self.cross_attn_image(q=q, k=k, v=memory, **extra))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
        num_k_exclude_rope: int = 0,
        memory_key_scale: Optional[Tensor] = None,
        memory_key_mask: Optional[Tensor] = None,
        rows_equal: bool = False,
        rope_k_repeat: int = -1,
    ) -> Tensor:
        """Update ``tgt`` tokens by attending to themselves and to ``memory``.

        ``memory_key_scale`` (same layout as ``memory``, broadcastable, e.g. ``[B, N_mem, 1]`` when
        batch-first) multiplies the cross-attention keys before their projection:
        ``k = (memory + pos) * scale``. Values are not scaled. ``None`` leaves keys untouched.
        ``memory_key_mask`` (``[B, N_mem]`` bool, True = attend) hides padded memory tokens.
        ``rows_equal`` (batch-first ``tgt`` and ``query_pos`` whose rows are all the same): the
        self-attention runs on the first row only and is broadcast, the same arithmetic per row.
        ``rope_k_repeat`` is the number of memory frames in ``memory``, used by a
        ``RoPEAttentionv2`` cross-attention (EdgeTAM) only.
        """
        if rows_equal:
            first_pos = None if query_pos is None else query_pos[:1]
            tgt = self._forward_sa(tgt[:1], first_pos).expand_as(tgt)
        else:
            tgt = self._forward_sa(tgt, query_pos)
        tgt = self._forward_ca(
            tgt, memory, query_pos, pos, num_k_exclude_rope, memory_key_scale, memory_key_mask, rope_k_repeat
        )
        x = self.norm3(tgt)
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return tgt + self.dropout3(x)


class MemoryAttention(nn.Module):
    """Stack of ``MemoryAttentionLayer`` (independent copies of ``layer``) plus a final LayerNorm."""

    #: compute the first self-attention once for rows expanded from one frame (exact; ``False``
    #: computes every row, for benchmarks of what the sharing saves)
    share_equal_rows: bool = True

    def __init__(
        self,
        d_model: int,
        pos_enc_at_input: bool,
        layer: nn.Module,
        num_layers: int,
        batch_first: bool = True,
    ) -> None:
        """
        Args:
            d_model: token width.
            pos_enc_at_input: add ``0.1 * curr_pos`` to the current tokens before the first layer.
            layer: prototype layer, deep-copied ``num_layers`` times.
            num_layers: number of layers.
            batch_first: whether the layers work on ``[B, N, C]`` (inputs are always ``[N, B, C]``).
        """
        super().__init__()
        self.d_model = d_model
        self.layers = get_clones(layer, num_layers)
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first

    def forward(
        self,
        curr: Union[Tensor, List[Tensor]],
        memory: Tensor,
        curr_pos: Optional[Union[Tensor, List[Tensor]]] = None,
        memory_pos: Optional[Tensor] = None,
        num_obj_ptr_tokens: int = 0,
        memory_key_scale: Optional[Tensor] = None,
        memory_key_mask: Optional[Tensor] = None,
        num_spatial_mem: int = -1,
    ) -> Tensor:
        """Condition current-frame tokens on the memory.

        Args:
            curr: ``[N_q, B, C]`` current-frame tokens (or a one-element list of it).
            memory: ``[N_mem, B, C_mem]`` memory tokens; the last ``num_obj_ptr_tokens`` of them are
                object pointers, which get no rotary encoding.
            curr_pos: positional encoding of ``curr`` (same layout), or a one-element list.
            memory_pos: positional encoding of ``memory`` (same layout).
            num_obj_ptr_tokens: number of object-pointer tokens at the end of ``memory``.
            memory_key_scale: optional SAM2Long weights for the memory keys, **batch-first**,
                shape ``[B, N_mem, 1]`` (or broadcastable to ``[B, N_mem, C_mem]``). In every layer
                the cross-attention keys become ``(memory + memory_pos) * memory_key_scale`` before
                the key projection (values are unscaled). ``None`` gives exactly SAM 2's result.
            memory_key_mask: optional ``[B, N_mem]`` bool mask (True = attend), used when memories
                of different lengths are padded into one batch. ``None`` attends to every token.
            num_spatial_mem: number of memory frames (padded ones included) before the pointers;
                only a ``RoPEAttentionv2`` cross-attention (EdgeTAM) reads it.

        Returns:
            ``[N_q, B, C]`` conditioned tokens.
        """
        if isinstance(curr, list):
            if not isinstance(curr_pos, list) or len(curr) != 1 or len(curr_pos) != 1:
                raise ValueError("list inputs must be one-element lists for curr and curr_pos")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError("curr and memory must have the same batch size")
        if memory_key_mask is not None and not self.batch_first:
            raise ValueError("memory_key_mask needs batch_first=True")

        # Rows expanded from one frame (stride 0: every pathway and object of SAM2Long's batch) are
        # equal until the first cross-attention, so the input and the first self-attention are
        # computed once and broadcast.
        batch = curr.shape[1]
        rows_equal = (
            self.share_equal_rows
            and self.batch_first
            and batch > 1
            and curr.stride(1) == 0
            and (curr_pos is None or curr_pos.stride(1) == 0)
        )
        output = curr[:, :1] if rows_equal else curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * (curr_pos[:, :1] if rows_equal else curr_pos)
        if rows_equal:
            output = output.expand(-1, batch, -1)

        scale = memory_key_scale
        if self.batch_first:
            output = output.transpose(0, 1)
            curr_pos = _swap01(curr_pos)
            memory = memory.transpose(0, 1)
            memory_pos = _swap01(memory_pos)
        elif scale is not None:
            # Layers see sequence-first memory: bring the batch-first scale to that layout.
            scale = scale.reshape((1,) * (3 - scale.dim()) + tuple(scale.shape)).transpose(0, 1)

        for i, layer in enumerate(self.layers):
            extra = {"rows_equal": True} if rows_equal and i == 0 else {}
            if isinstance(layer.cross_attn_image, (RoPEAttention, RoPEAttentionv2)):
                extra["num_k_exclude_rope"] = num_obj_ptr_tokens
            if scale is not None:
                extra["memory_key_scale"] = scale
            if memory_key_mask is not None:
                extra["memory_key_mask"] = memory_key_mask
            output = layer(
                tgt=output,
                memory=memory,
                pos=memory_pos,
                query_pos=curr_pos,
                rope_k_repeat=num_spatial_mem,  # read by a RoPEAttentionv2 cross-attention only
                **extra,
            )

        output = self.norm(output)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output


def _swap01(x: Optional[Tensor]) -> Optional[Tensor]:
    """Transpose the first two dims of an optional tensor."""
    return None if x is None else x.transpose(0, 1)
