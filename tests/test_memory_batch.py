"""Model-free tests of the padded memory batch used by SAM2Long's batched memory attention."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sam2.modeling.sam2_utils import get_1d_sine_pe
from sam2long.memory_batch import ItemMemory, PointerMemory, SpatialMemory, assemble_memory_batch

MEM, HID, NUM_MASKMEM, H, W = 4, 8, 7, 2, 3


def _model(add_tpos: bool = True) -> SimpleNamespace:
    torch.manual_seed(0)
    return SimpleNamespace(
        mem_dim=MEM,
        hidden_dim=HID,
        maskmem_tpos_enc=torch.randn(NUM_MASKMEM, 1, 1, MEM),
        add_tpos_enc_to_obj_ptrs=add_tpos,
        proj_tpos_enc_in_obj_ptrs=True,
        obj_ptr_tpos_proj=nn.Linear(HID, MEM),
    )


def _item(n_frames: int, n_ptrs: int, seed: int, weight: float = 1.0) -> ItemMemory:
    g = torch.Generator().manual_seed(seed)
    return ItemMemory(
        spatial=[SpatialMemory(torch.randn(MEM, H, W, generator=g), tpos_index=i, weight=weight) for i in range(n_frames)],
        pointers=[PointerMemory(torch.randn(HID, generator=g), tpos=j + 1, weight=weight) for j in range(n_ptrs)],
    )


def _single(model, item: ItemMemory, pos_enc: torch.Tensor, max_ptrs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's construction for one item: frames then pointer tokens, positions added per entry."""
    mem, pos = [], []
    for e in item.spatial:
        mem.append(e.features.flatten(1).T)
        pos.append(pos_enc.flatten(1).T + model.maskmem_tpos_enc[e.tpos_index].reshape(1, MEM))
    if item.pointers:
        ptrs = torch.stack([p.pointer for p in item.pointers])
        t = torch.tensor([float(p.tpos) for p in item.pointers])
        ptr_pos = model.obj_ptr_tpos_proj(get_1d_sine_pe(t / (max_ptrs - 1), dim=HID))
        mem.append(ptrs.reshape(-1, HID // MEM, MEM).flatten(0, 1))
        pos.append(ptr_pos.repeat_interleave(HID // MEM, dim=0))
    return torch.cat(mem), torch.cat(pos)


def test_equal_layouts_need_no_mask_and_match_the_per_item_construction() -> None:
    model, pos_enc = _model(), torch.randn(MEM, H, W)
    items = [_item(3, 2, seed=1), _item(3, 2, seed=2)]
    batch = assemble_memory_batch(model, items, pos_enc, max_obj_ptrs_in_encoder=16, dtype=torch.float32)
    assert batch.key_mask is None and batch.key_scale is None
    assert batch.num_obj_ptr_tokens == 2 * HID // MEM
    for b, item in enumerate(items):
        mem, pos = _single(model, item, pos_enc, 16)
        torch.testing.assert_close(batch.memory[:, b], mem, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch.memory_pos[:, b], pos, rtol=0, atol=1e-6)


def test_ragged_items_are_padded_and_masked() -> None:
    model, pos_enc = _model(), torch.randn(MEM, H, W)
    items = [_item(3, 2, seed=1), _item(1, 0, seed=2)]
    batch = assemble_memory_batch(model, items, pos_enc, max_obj_ptrs_in_encoder=16, dtype=torch.float32)
    hw, split = H * W, HID // MEM
    assert batch.memory.shape == (3 * hw + 2 * split, 2, MEM)
    valid = batch.key_mask
    assert valid is not None and valid[0].all()
    assert valid[1, :hw].all() and not valid[1, hw:].any()
    mem, _ = _single(model, items[1], pos_enc, 16)
    torch.testing.assert_close(batch.memory[:hw, 1], mem, rtol=0, atol=1e-6)
    assert not batch.memory[hw : 3 * hw, 1].any(), "padding frames are zero"


def test_weights_become_per_token_key_scales() -> None:
    model, pos_enc = _model(), torch.randn(MEM, H, W)
    item = _item(2, 1, seed=3)
    item.spatial[0].weight, item.spatial[1].weight, item.pointers[0].weight = 0.95, 1.05, 0.9
    batch = assemble_memory_batch(model, [item], pos_enc, max_obj_ptrs_in_encoder=16, dtype=torch.float32)
    hw, split = H * W, HID // MEM
    expected = torch.tensor([0.95] * hw + [1.05] * hw + [0.9] * split)
    assert batch.key_scale is not None
    torch.testing.assert_close(batch.key_scale[0, :, 0], expected)


def test_pointer_positions_off_and_empty_input() -> None:
    model, pos_enc = _model(add_tpos=False), torch.randn(MEM, H, W)
    batch = assemble_memory_batch(model, [_item(1, 2, seed=4)], pos_enc, 16, torch.float32)
    assert not batch.memory_pos[H * W :].any(), "pointer positions are zero without temporal encoding"
    with pytest.raises(ValueError):
        assemble_memory_batch(model, [], pos_enc, 16, torch.float32)
    with pytest.raises(ValueError):
        assemble_memory_batch(model, [ItemMemory()], pos_enc, 16, torch.float32)
