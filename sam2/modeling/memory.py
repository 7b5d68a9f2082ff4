"""What memory attention reads: per-item memories and their padded, batched token layout.

A *memory item* is everything one track attends to on the current frame: encoded memory frames
(spatial entries, each with a temporal slot and a key weight) and object pointers (each with a
temporal distance and a key weight). SAM 2 builds one item per call (its rows share one memory
layout); SAM2Long builds one item per (object, distinct pathway), and items differ in length.
:meth:`sam2.modeling.sam2_base.SAM2Base.assemble_memory` turns items into one
:class:`MemoryBatch`; :func:`pad_and_stack` is its model-free padding step. The layout of every
batch row is::

    [frame 0 | frame 1 | ... | frame F-1 | pointer tokens]

Rows shorter than the longest are zero-padded and masked out of attention (``key_mask``), so a
row attends to exactly its own entries. With a single item nothing is padded and no mask or key
scale is produced: the computation is exactly SAM 2's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor


def tpos_enc_row(num_maskmem: int, t_pos: int) -> int:
    """Row of ``maskmem_tpos_enc`` for temporal slot ``t_pos`` (0 = conditioning frame,
    ``1 .. num_maskmem - 1`` = oldest .. newest recent frame)."""
    return num_maskmem - t_pos - 1


def recent_index(current: int, t_rel: int, stride: int = 1, reverse: bool = False) -> int:
    """Index of the frame (or step) remembered ``t_rel`` places before ``current`` in tracking order.

    ``t_rel == 1`` is the adjacent one; farther memories sit on the grid of every ``stride``-th index.
    """
    if t_rel == 1:
        return current + 1 if reverse else current - 1
    if reverse:
        nearest = -(-(current + 2) // stride) * stride  # first grid index >= current + 2
        return nearest + (t_rel - 2) * stride
    nearest = ((current - 2) // stride) * stride  # last grid index <= current - 2
    return nearest - (t_rel - 2) * stride


def recent_memory_slots(
    current: int,
    num_maskmem: int,
    pointer_budget: int,
    num_frames: int,
    stride: int = 1,
    reverse: bool = False,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """SAM 2's recent-memory rule, the one place it is written.

    Returns ``(spatial, pointers)``: ``(t_pos, index)`` of the ``num_maskmem - 1`` recent spatial
    memories (oldest first, ``t_pos`` 1 .. num_maskmem - 1) and ``(distance, index)`` of the recent object
    pointers (most recent first, at most ``pointer_budget - 1``, indices inside ``[0, num_frames)``).
    Indices are frames (SAM 2 over a session) or processing steps (a SAM2Long pathway); the caller looks
    them up and skips the ones it has no memory for.
    """
    spatial = [
        (t_pos, recent_index(current, num_maskmem - t_pos, stride, reverse))
        for t_pos in range(1, num_maskmem)
    ]
    pointers = []
    for distance in range(1, pointer_budget):
        index = current + distance if reverse else current - distance
        if not 0 <= index < num_frames:
            break
        pointers.append((distance, index))
    return spatial, pointers


@dataclass
class SpatialMemory:
    """One encoded memory frame of an item.

    ``features`` may be stored offloaded and in reduced precision; they are moved and cast when
    the batch is assembled. ``tpos_index`` is the row of ``maskmem_tpos_enc`` (:func:`tpos_enc_row`),
    ``weight`` scales the attention keys of this frame's tokens.
    """

    features: Tensor  # [b, C_mem, h, w]
    pos_enc: Tensor  # [b or 1, C_mem, h, w] spatial positional encoding of a memory frame
    tpos_index: int
    weight: float = 1.0


@dataclass
class PointerMemory:
    """One object pointer of an item with its temporal distance (normalised by the pointer budget)."""

    pointer: Tensor  # [b, C]
    distance: int
    weight: float = 1.0


@dataclass
class ItemMemory:
    """Everything one item (``b`` rows sharing a memory layout) attends to on the current frame."""

    spatial: list[SpatialMemory] = field(default_factory=list)
    pointers: list[PointerMemory] = field(default_factory=list)
    # the distance pointer encodings are normalised by; None: SAM 2's
    # ``min(num_frames, max_obj_ptrs_in_encoder) - 1`` (DAM4SAM counts only the frames seen so far)
    pointer_span: Optional[int] = None

    @property
    def batch_size(self) -> int:
        if not self.spatial:
            raise ValueError("a memory item needs at least one spatial memory frame")
        return self.spatial[0].features.size(0)


@dataclass
class ItemTokens:
    """One item's memory as sequence-first tokens, split into its frame and pointer sections."""

    frames: Tensor  # [F * hw, b, C_mem]
    frames_pos: Tensor
    frame_weights: list[float]  # one per frame
    pointers: Optional[Tensor]  # [Q * split, b, C_mem] or None
    pointers_pos: Optional[Tensor]
    pointer_weights: list[float]  # one per pointer
    tokens_per_frame: int
    tokens_per_pointer: int


@dataclass
class MemoryBatch:
    """Sequence-first inputs of ``MemoryAttention`` for a batch of items."""

    memory: Tensor  # [N, B, C_mem]
    memory_pos: Tensor  # [N, B, C_mem]
    num_obj_ptr_tokens: int
    key_mask: Optional[Tensor] = None  # [B, N] bool, True = attend; None when nothing is padded
    key_scale: Optional[Tensor] = None  # [B, N, 1]; None when every weight is 1
    # memory frames before the pointers, padded ones included (EdgeTAM's per-frame key RoPE)
    num_spatial_mem: int = -1


def _pad_tokens(tokens: Tensor, length: int) -> Tensor:
    """Zero-pad ``[L, b, C]`` tokens to ``length`` along the sequence."""
    if tokens.size(0) == length:
        return tokens
    pad = tokens.new_zeros(length - tokens.size(0), *tokens.shape[1:])
    return torch.cat([tokens, pad], dim=0)


def _row_values(values: Sequence[float], repeat: int, length: int, fill: float) -> list[float]:
    """Per-entry values repeated per token and right-padded to ``length`` tokens."""
    row = [v for v in values for _ in range(repeat)]
    return row + [fill] * (length - len(row))


def pad_and_stack(items: Sequence[ItemTokens], dtype: torch.dtype) -> MemoryBatch:
    """Stack items of possibly different lengths into one batch (see the module docstring).

    ``dtype`` is the dtype of the key scale (that of the current-frame features).
    """
    if not items:
        raise ValueError("a memory batch needs at least one item")
    frame_len = max(item.frames.size(0) for item in items)
    ptr_len = max(0 if item.pointers is None else item.pointers.size(0) for item in items)
    if len(items) == 1:
        item = items[0]
        memory, memory_pos = [item.frames], [item.frames_pos]
        if item.pointers is not None:
            memory.append(item.pointers)
            memory_pos.append(item.pointers_pos)
        weights = [item.frame_weights, item.pointer_weights]
        unit = all(w == 1.0 for part in weights for w in part)
        scale = None
        if not unit:
            row = _row_values(item.frame_weights, item.tokens_per_frame, frame_len, 1.0)
            row += _row_values(item.pointer_weights, item.tokens_per_pointer, ptr_len, 1.0)
            b = item.frames.size(1)
            scale = torch.tensor([row] * b, dtype=dtype, device=item.frames.device).unsqueeze(-1)
        return MemoryBatch(
            torch.cat(memory, dim=0), torch.cat(memory_pos, dim=0), ptr_len, None, scale, len(item.frame_weights)
        )

    device = items[0].frames.device
    memory, memory_pos, valid_rows, weight_rows = [], [], [], []
    for item in items:
        b = item.frames.size(1)
        parts = [_pad_tokens(item.frames, frame_len)]
        pos_parts = [_pad_tokens(item.frames_pos, frame_len)]
        n_ptr = 0
        if ptr_len:
            if item.pointers is None:
                template = item.frames
                parts.append(template.new_zeros(ptr_len, b, template.size(2)))
                pos_parts.append(item.frames_pos.new_zeros(ptr_len, b, template.size(2)))
            else:
                n_ptr = item.pointers.size(0)
                parts.append(_pad_tokens(item.pointers, ptr_len))
                pos_parts.append(_pad_tokens(item.pointers_pos, ptr_len))
        memory.append(torch.cat(parts, dim=0))
        memory_pos.append(torch.cat(pos_parts, dim=0))
        n_frame = item.frames.size(0)
        valid = (
            [True] * n_frame + [False] * (frame_len - n_frame) + [True] * n_ptr + [False] * (ptr_len - n_ptr)
        )
        weights = _row_values(item.frame_weights, item.tokens_per_frame, frame_len, 1.0)
        weights += _row_values(item.pointer_weights, item.tokens_per_pointer, ptr_len, 1.0)
        valid_rows.extend([valid] * b)
        weight_rows.extend([weights] * b)
    key_mask = torch.tensor(valid_rows, dtype=torch.bool, device=device)
    key_scale = torch.tensor(weight_rows, dtype=dtype, device=device).unsqueeze(-1)
    return MemoryBatch(
        memory=torch.cat(memory, dim=1),
        memory_pos=torch.cat(memory_pos, dim=1),
        num_obj_ptr_tokens=ptr_len,
        key_mask=None if bool(key_mask.all()) else key_mask,
        key_scale=None if bool((key_scale == 1).all()) else key_scale,
        num_spatial_mem=frame_len // items[0].tokens_per_frame,
    )
