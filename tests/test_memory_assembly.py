"""The one memory assembler (``SAM2Base.assemble_memory``): SAM 2's single item and SAM2Long's padded batch."""

from __future__ import annotations

import pytest
import torch

from sam2.build_sam import build_sam2
from sam2.modeling.memory import ItemMemory, PointerMemory, SpatialMemory

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
H = W = 16  # memory feature map at 256 px


@pytest.fixture(scope="module")
def model(make_checkpoint):
    return build_sam2(
        CFG, make_checkpoint(CFG, seed=3), device="cpu", hydra_overrides_extra=["++model.image_size=256"]
    )


def _item(model, n_frames: int, n_ptrs: int, seed: int, weight: float = 1.0) -> ItemMemory:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(1, model.mem_dim, H, W, generator=g)
    return ItemMemory(
        spatial=[
            SpatialMemory(torch.randn(1, model.mem_dim, H, W, generator=g), pos, tpos_index=i, weight=weight)
            for i in range(n_frames)
        ],
        pointers=[
            PointerMemory(torch.randn(1, model.hidden_dim, generator=g), distance=j + 1, weight=weight)
            for j in range(n_ptrs)
        ],
    )


def _attend(model, batch, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = batch.memory.size(1)
    curr = torch.randn(H * W, 1, model.hidden_dim, generator=g).expand(-1, rows, -1)
    pos = torch.randn(H * W, 1, model.hidden_dim, generator=g).expand(-1, rows, -1)
    with torch.no_grad():
        return model.memory_attention(
            curr=curr,
            curr_pos=pos,
            memory=batch.memory,
            memory_pos=batch.memory_pos,
            num_obj_ptr_tokens=batch.num_obj_ptr_tokens,
            memory_key_scale=batch.key_scale,
            memory_key_mask=batch.key_mask,
        )


def _assemble(model, items):
    with torch.no_grad():
        return model.assemble_memory(items, num_frames=50, device=torch.device("cpu"), dtype=torch.float32)


def test_equal_layouts_need_no_mask_and_rows_equal_their_single_item(model) -> None:
    items = [_item(model, 3, 2, seed=1), _item(model, 3, 2, seed=2)]
    batch = _assemble(model, items)
    assert batch.key_mask is None and batch.key_scale is None
    split = model.hidden_dim // model.mem_dim
    assert batch.num_obj_ptr_tokens == 2 * split
    assert batch.memory.shape == (3 * H * W + 2 * split, 2, model.mem_dim)
    for b, item in enumerate(items):
        single = _assemble(model, [item])
        assert torch.equal(batch.memory[:, b], single.memory[:, 0])
        assert torch.equal(batch.memory_pos[:, b], single.memory_pos[:, 0])


def test_ragged_items_are_padded_masked_and_attend_only_to_their_own_entries(model) -> None:
    items = [_item(model, 3, 2, seed=1), _item(model, 1, 0, seed=2), _item(model, 2, 1, seed=5)]
    batch = _assemble(model, items)
    hw, split = H * W, model.hidden_dim // model.mem_dim
    assert batch.memory.shape == (3 * hw + 2 * split, 3, model.mem_dim)
    mask = batch.key_mask
    assert mask is not None and mask[0].all()
    assert mask[1, :hw].all() and not mask[1, hw:].any()
    assert mask[2, : 2 * hw].all() and not mask[2, 2 * hw : 3 * hw].any()
    assert mask[2, 3 * hw : 3 * hw + split].all() and not mask[2, 3 * hw + split :].any()
    assert not batch.memory[hw : 3 * hw, 1].any(), "padding frames are zero"
    fused = _attend(model, batch)
    for b, item in enumerate(items):
        alone = _attend(model, _assemble(model, [item]))
        torch.testing.assert_close(fused[:, b], alone[:, 0], rtol=0, atol=1e-4)


def test_weights_become_per_token_key_scales(model) -> None:
    item = _item(model, 2, 1, seed=3)
    item.spatial[0].weight, item.spatial[1].weight, item.pointers[0].weight = 0.95, 1.05, 0.9
    batch = _assemble(model, [item])
    hw, split = H * W, model.hidden_dim // model.mem_dim
    expected = torch.tensor([0.95] * hw + [1.05] * hw + [0.9] * split)
    assert batch.key_mask is None and batch.key_scale is not None
    torch.testing.assert_close(batch.key_scale[0, :, 0], expected)
    # scaled keys change the attention result; unit weights give SAM 2's
    unit = _assemble(model, [_item(model, 2, 1, seed=3)])
    assert unit.key_scale is None
    assert not torch.allclose(_attend(model, batch), _attend(model, unit))


def test_pointer_positions_follow_the_distance_and_empty_input_is_refused(model) -> None:
    near, far = _item(model, 1, 1, seed=4), _item(model, 1, 1, seed=4)
    far.pointers[0].distance = 7
    hw = H * W
    a, b = _assemble(model, [near]), _assemble(model, [far])
    assert torch.equal(a.memory, b.memory)
    assert torch.equal(a.memory_pos[:hw], b.memory_pos[:hw])
    assert not torch.equal(a.memory_pos[hw:], b.memory_pos[hw:])
    with pytest.raises(ValueError):
        _assemble(model, [])
    with pytest.raises(ValueError):
        _assemble(model, [ItemMemory()])
