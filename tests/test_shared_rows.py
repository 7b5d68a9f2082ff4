"""Exact sharing across a frame's batch rows: the first self-attention runs once per frame.

Every row of SAM2Long's batch (each object's pathways) starts memory attention from the same
frame features, expanded without copying. ``MemoryAttention`` sees the stride-0 rows, computes the
input and the first layer's self-attention on one row and broadcasts it. These tests compare that
with the unshared computation (the same inputs copied into distinct rows): bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from sam2.build_sam import build_sam2
from sam2long import build_sam2long_video_predictor

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_attention_rows_equal_matches_unshared(dtype: torch.dtype) -> None:
    model = build_sam2(CONFIG, None, "cpu", hydra_overrides_extra=["++model.image_size=256"])
    attention = model.memory_attention
    self_attn = attention.layers[0].self_attn
    calls: list[int] = []
    self_attn.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    gen = torch.Generator().manual_seed(0)
    tokens, batch, mem_tokens = 16 * 16, 4, 3 * 16 * 16 + 8
    curr = torch.randn(tokens, 1, 256, generator=gen).expand(-1, batch, -1)
    curr_pos = torch.randn(tokens, 1, 256, generator=gen).expand(-1, batch, -1)
    memory = torch.randn(mem_tokens, batch, 64, generator=gen)
    memory_pos = torch.randn(mem_tokens, batch, 64, generator=gen)
    key_scale = 0.95 + 0.1 * torch.rand(batch, mem_tokens, 1, generator=gen)
    key_mask = torch.ones(batch, mem_tokens, dtype=torch.bool)
    key_mask[1, -20:] = False
    run = functools.partial(
        attention,
        memory=memory,
        memory_pos=memory_pos,
        num_obj_ptr_tokens=8,
        memory_key_scale=key_scale,
        memory_key_mask=key_mask,
    )
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        shared = run(curr=curr, curr_pos=curr_pos)
        unshared = run(curr=curr.contiguous(), curr_pos=curr_pos.contiguous())
    assert calls == [1, batch], "the shared path runs the first self-attention on one row"
    assert shared.dtype == unshared.dtype
    assert torch.equal(shared, unshared)


def test_sam2long_outputs_unchanged_by_sharing(make_checkpoint, first_frames) -> None:
    ckpt = make_checkpoint(CONFIG, obj_score_bias=5.0)
    results = {}
    for share in (True, False):
        predictor = build_sam2long_video_predictor(
            CONFIG, ckpt, "cpu", hydra_overrides_extra=["++model.image_size=128"], num_pathways=3
        )
        if not share:
            frame_features = predictor.frame_features

            def copied_rows(state, frame_idx, batch_size, _inner=frame_features):
                features = _inner(state, frame_idx, batch_size)
                return dataclasses.replace(
                    features,
                    vision_feats=[x.contiguous() for x in features.vision_feats],
                    vision_pos_embeds=[x.contiguous() for x in features.vision_pos_embeds],
                )

            predictor.frame_features = copied_rows
        state = predictor.init_state(str(first_frames(6)))
        predictor.add_new_points_or_box(state, 0, 1, points=[[198, 112]], labels=[1])
        predictor.add_new_points_or_box(state, 0, 2, box=[75, 65, 140, 200])
        results[share] = [masks for _, _, masks in predictor.propagate_in_video(state)]
    assert len(results[True]) == 6
    for shared, unshared in zip(results[True], results[False]):
        assert torch.equal(shared, unshared)
