"""Assemble the memories of many (object, pathway) items into one padded memory-attention batch.

SAM 2 builds one memory sequence per call: spatial memory frames (``H*W`` tokens each) followed
by object-pointer tokens. With SAM2Long every pathway of every object has its own memory bank,
and banks differ in length (frames failing the IoU/occlusion test are skipped, objects have
different conditioning frames). To run memory attention once per frame for all of them we pad
every item to the same layout::

    [frame 0 | frame 1 | ... | frame F-1 | pointer tokens (Np * split)]

Padded frames and pointers are masked out of attention (``key_mask``), so each item attends to
exactly its own entries. When all items have the same number of entries no mask is produced and
the computation is the one SAM 2 performs for a single item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from sam2.modeling.sam2_utils import get_1d_sine_pe


@dataclass
class SpatialMemory:
    """One encoded memory frame of one item.

    ``tpos_index`` indexes ``model.maskmem_tpos_enc`` (``num_maskmem - t_pos - 1``).
    ``weight`` scales the attention keys of this frame's tokens (SAM2Long modulation).
    """

    features: Tensor  # [C_mem, h, w], possibly stored in bfloat16
    tpos_index: int
    weight: float = 1.0


@dataclass
class PointerMemory:
    """One object pointer of one item, with its temporal offset (SAM 2's ``pos_list`` entry)."""

    pointer: Tensor  # [C]
    tpos: int
    weight: float = 1.0


@dataclass
class ItemMemory:
    """Everything one (object, pathway) item attends to on the current frame."""

    spatial: List[SpatialMemory] = field(default_factory=list)
    pointers: List[PointerMemory] = field(default_factory=list)


@dataclass
class MemoryBatch:
    """Sequence-first memory tensors ready for ``MemoryAttention``."""

    memory: Tensor  # [N, B, C_mem]
    memory_pos: Tensor  # [N, B, C_mem]
    num_obj_ptr_tokens: int
    key_mask: Optional[Tensor]  # [B, N] bool, True = attend; None when nothing is padded
    key_scale: Optional[Tensor]  # [B, N, 1]; None when every weight is 1


def _pad_rows(rows: list[list[float]], width: int, fill: float) -> list[list[float]]:
    """Right-pad ragged per-item lists to a rectangle."""
    return [row + [fill] * (width - len(row)) for row in rows]


def assemble_memory_batch(
    model,
    items: Sequence[ItemMemory],
    maskmem_pos_enc: Tensor,
    max_obj_ptrs_in_encoder: int,
    dtype: torch.dtype,
) -> MemoryBatch:
    """Pad and stack ``items`` into one memory batch for ``model.memory_attention``.

    ``maskmem_pos_enc`` is the spatial positional encoding of one memory frame ``[C_mem, h, w]``
    (identical for every frame). ``max_obj_ptrs_in_encoder`` is SAM 2's per-video pointer limit
    (``min(num_frames, model.max_obj_ptrs_in_encoder)``), which normalises pointer offsets.
    """
    if not items:
        raise ValueError("assemble_memory_batch needs at least one item")
    B = len(items)
    device = maskmem_pos_enc.device
    mem_dim = model.mem_dim
    hidden_dim = model.hidden_dim
    hw = maskmem_pos_enc.shape[-2] * maskmem_pos_enc.shape[-1]

    n_frames = [len(it.spatial) for it in items]
    n_ptrs = [len(it.pointers) for it in items]
    F_max, P_max = max(n_frames), max(n_ptrs)
    if F_max == 0:
        raise ValueError("every item needs at least one spatial memory frame")
    padded = len(set(n_frames)) > 1 or len(set(n_ptrs)) > 1

    # Spatial memory: one stack per item, padded to F_max frames -> [F_max * hw, B, C_mem].
    frames = torch.zeros(B, F_max, *maskmem_pos_enc.shape, device=device, dtype=dtype)
    for b, item in enumerate(items):
        if item.spatial:
            stacked = torch.stack([entry.features for entry in item.spatial])
            frames[b, : len(item.spatial)] = stacked.to(device=device, dtype=dtype)
    feats = frames.flatten(3).permute(1, 3, 0, 2).reshape(F_max * hw, B, mem_dim)
    tpos_index = torch.tensor(
        _pad_rows([[e.tpos_index for e in it.spatial] for it in items], F_max, 0), device=device
    )
    tpos = model.maskmem_tpos_enc.reshape(-1, mem_dim)[tpos_index].to(dtype)  # [B, F_max, C_mem]
    spatial_pos = maskmem_pos_enc.to(device=device, dtype=dtype).flatten(1).transpose(0, 1)  # [hw, C_mem]
    feat_pos = spatial_pos[None, :, None, :] + tpos.transpose(0, 1)[:, None, :, :]  # [F_max, hw, B, C_mem]
    frame_w = torch.tensor(_pad_rows([[e.weight for e in it.spatial] for it in items], F_max, 1.0), dtype=dtype)
    memory = [feats]
    memory_pos = [feat_pos.reshape(F_max * hw, B, mem_dim)]
    key_valid = [torch.arange(F_max, device=device)[None, :] < torch.tensor(n_frames, device=device)[:, None]]
    key_valid[0] = key_valid[0].repeat_interleave(hw, dim=1)
    key_w = [frame_w.to(device).repeat_interleave(hw, dim=1)]

    num_obj_ptr_tokens = 0
    if P_max > 0:
        ptrs = torch.zeros(B, P_max, hidden_dim, device=device, dtype=dtype)
        for b, item in enumerate(items):
            if item.pointers:
                stacked = torch.stack([entry.pointer for entry in item.pointers])
                ptrs[b, : len(item.pointers)] = stacked.to(device=device, dtype=dtype)
        ptrs = ptrs.transpose(0, 1)  # [P_max, B, C]
        tpos = torch.tensor(
            _pad_rows([[float(e.tpos) for e in it.pointers] for it in items], P_max, 0.0), device=device
        ).transpose(0, 1)
        ptr_w = torch.tensor(_pad_rows([[e.weight for e in it.pointers] for it in items], P_max, 1.0), dtype=dtype)
        if model.add_tpos_enc_to_obj_ptrs:
            t_diff_max = max_obj_ptrs_in_encoder - 1
            tpos_dim = hidden_dim if model.proj_tpos_enc_in_obj_ptrs else mem_dim
            ptr_pos = model.obj_ptr_tpos_proj(get_1d_sine_pe(tpos / t_diff_max, dim=tpos_dim)).to(dtype)
        else:
            ptr_pos = ptrs.new_zeros(P_max, B, mem_dim)
        split = 1
        if mem_dim < hidden_dim:
            # A pointer of width C becomes C // C_mem consecutive tokens of width C_mem.
            split = hidden_dim // mem_dim
            ptrs = ptrs.reshape(P_max, B, split, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            ptr_pos = ptr_pos.repeat_interleave(split, dim=0)
        memory.append(ptrs)
        memory_pos.append(ptr_pos)
        ptr_valid = torch.arange(P_max, device=device)[None, :] < torch.tensor(n_ptrs, device=device)[:, None]
        key_valid.append(ptr_valid.repeat_interleave(split, dim=1))
        key_w.append(ptr_w.to(device).repeat_interleave(split, dim=1))
        num_obj_ptr_tokens = P_max * split

    key_scale = torch.cat(key_w, dim=1).unsqueeze(-1)
    return MemoryBatch(
        memory=torch.cat(memory, dim=0),
        memory_pos=torch.cat(memory_pos, dim=0),
        num_obj_ptr_tokens=num_obj_ptr_tokens,
        key_mask=torch.cat(key_valid, dim=1) if padded else None,
        key_scale=None if bool((key_scale == 1).all()) else key_scale,
    )
