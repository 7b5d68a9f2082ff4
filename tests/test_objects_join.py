"""New objects and prompts during a propagation, and objects added mid-video between propagations.

An object prompted on frame t while a propagation runs (from its ``before_frame`` hook, as a detector
or a live user does) must equal the same object prompted on frame t before the propagation started
(it joins on its first prompted frame either way), and must leave the other objects as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.build_sam import build_sam2_video_predictor
from sam2long import build_sam2long_video_predictor

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
NUM_FRAMES = 8
JOIN = 4
BOX = [20, 30, 200, 250]


@pytest.fixture(scope="module")
def frames(first_frames) -> Path:
    return first_frames(NUM_FRAMES)


@pytest.fixture(scope="module", params=["sam2", "sam2long", "sam2long-batched"])
def predictor(request, make_checkpoint):
    """SAM 2 (objects run one by one), SAM2Long with one model pass per object, and SAM2Long batching
    all objects in one pass (whose results depend on the batch up to float rounding)."""
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=1.0)
    common = dict(device="cpu", hydra_overrides_extra=OVERRIDES, apply_postprocessing=False)
    if request.param == "sam2":
        return build_sam2_video_predictor(CFG, ckpt, **common)
    return build_sam2long_video_predictor(
        CFG, ckpt, batch_objects=request.param.endswith("batched"), **common
    )


def _same_object(a: torch.Tensor, b: torch.Tensor, exact: bool) -> bool:
    """Bit for bit, or (batched passes) the same mask up to float rounding."""
    if exact:
        return torch.equal(a, b)
    union = ((a > 0) | (b > 0)).sum().item()
    iou = 1.0 if union == 0 else ((a > 0) & (b > 0)).sum().item() / union
    return iou >= 0.999 and (a - b).abs().max().item() < 1e-3


def _exact(predictor) -> bool:
    return not predictor.tracker.batch_objects


def _first_object(predictor, state) -> None:
    mask = np.zeros((270, 480), dtype=bool)
    mask[100:200, 150:300] = True
    predictor.add_new_mask(state, 0, 1, mask)


def _collect(items) -> dict[int, dict[int, torch.Tensor]]:
    """``{frame: {obj_id: logits}}`` from a propagation."""
    return {f: {o: m[i].clone() for i, o in enumerate(ids)} for f, ids, m in items}


def _run(predictor, frames: Path, join_box_at: int | None, during: bool, **kw):
    state = predictor.init_state(str(frames))
    _first_object(predictor, state)
    hook = None
    if join_box_at is not None and not during:
        predictor.add_new_points_or_box(state, join_box_at, 3, box=BOX)
    if join_box_at is not None and during:

        def hook(frame_idx: int) -> None:
            if frame_idx == join_box_at:
                predictor.add_new_points_or_box(state, frame_idx, 3, box=BOX)

    out = _collect(
        predictor.propagate_in_video(state, objects_join_at_first_prompt=True, before_frame=hook, **kw)
    )
    return out, state


def test_object_prompted_during_propagation_equals_one_prompted_before(predictor, frames: Path) -> None:
    during, state = _run(predictor, frames, JOIN, during=True)
    before, _ = _run(predictor, frames, JOIN, during=False)
    alone, _ = _run(predictor, frames, None, during=False)
    assert sorted(during) == sorted(before) == sorted(alone) == list(range(NUM_FRAMES))
    assert state["obj_ids"] == [1, 3]
    for f in range(NUM_FRAMES):
        assert torch.equal(during[f][1], before[f][1]), f
        assert _same_object(during[f][1], alone[f][1], _exact(predictor)), f"object 1 changed on frame {f}"
        if f < JOIN:
            assert 3 not in during[f] or (during[f][3] <= 0).all(), f"object 3 present before it joined ({f})"
            assert (before[f][3] <= 0).all()
        else:
            assert torch.equal(during[f][3], before[f][3]), f
    assert (during[JOIN][3] > 0).any() and (during[NUM_FRAMES - 1][3] > 0).any(), "object 3 not tracked"
    assert state["propagation"] is None, "the finished propagation is no longer recorded"


def test_prompt_on_a_frame_the_propagation_passed_is_refused(predictor, frames: Path) -> None:
    state = predictor.init_state(str(frames))
    _first_object(predictor, state)
    run = predictor.propagate_in_video(state, before_frame=lambda f: None)
    for frame_idx, _, _ in run:
        if frame_idx >= 3:
            break
    with pytest.raises(ValueError, match=r"frame 1 was already processed by the propagation in progress"):
        predictor.add_new_points_or_box(state, 1, 3, box=BOX)
    run.close()
    assert state["propagation"] is None
    predictor.add_new_points_or_box(state, 1, 3, box=BOX)  # allowed once it is over


def test_object_added_mid_video_between_propagations(predictor, frames: Path) -> None:
    """Propagate frames 0-3, add an object on frame 4, propagate from 4: the new object equals one
    prompted on frame 4 from the start; the first object equals the same two runs without it."""

    def two_runs(add: bool) -> dict[int, dict[int, torch.Tensor]]:
        state = predictor.init_state(str(frames))
        _first_object(predictor, state)
        out = _collect(predictor.propagate_in_video(state, max_frame_num_to_track=JOIN - 1))
        if add:
            predictor.add_new_points_or_box(state, JOIN, 3, box=BOX)
        out.update(_collect(predictor.propagate_in_video(state, start_frame_idx=JOIN)))
        return out

    with_new, without = two_runs(True), two_runs(False)
    from_start, _ = _run(predictor, frames, JOIN, during=False, start_frame_idx=JOIN)
    assert sorted(with_new) == sorted(without) == list(range(NUM_FRAMES))
    for f in range(NUM_FRAMES):
        assert _same_object(with_new[f][1], without[f][1], _exact(predictor)), f
        if f >= JOIN:
            assert _same_object(with_new[f][3], from_start[f][3], _exact(predictor)), f
