"""Prompts are validated by the predictor API itself, with errors that name the argument and the valid range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam2.build_sam import build_sam2_video_predictor
from sam2long import build_sam2long_video_predictor

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
H, W, T = 270, 480, 8  # the bedroom test frames


@pytest.fixture(scope="module", params=["sam2", "sam2long"])
def session(request, make_checkpoint, bedroom_dir: Path):
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=1.0)
    build = build_sam2_video_predictor if request.param == "sam2" else build_sam2long_video_predictor
    predictor = build(CFG, ckpt, device="cpu", hydra_overrides_extra=OVERRIDES)
    return predictor, predictor.init_state(str(bedroom_dir))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(frame_idx=0, points=[[5000, 5000]], labels=[1]),
            r"points \[\[5000.0, 5000.0\]\] lie outside.*0\.\.480 x 0\.\.270",
        ),
        (dict(frame_idx=0, points=[[-1, 10]], labels=[1]), "outside the frame"),
        (dict(frame_idx=0, points=[[0.5, 1.5]], labels=[1], normalize_coords=False), r"\[0, 1\]"),
        (
            dict(frame_idx=-1, points=[[10, 10]], labels=[1]),
            r"frame_idx -1 is outside the video's frames 0\.\.7",
        ),
        (
            dict(frame_idx=99, points=[[10, 10]], labels=[1]),
            r"frame_idx 99 is outside the video's frames 0\.\.7",
        ),
        (dict(frame_idx=1.5, points=[[10, 10]], labels=[1]), "frame_idx must be an integer"),
        (dict(frame_idx=0, box=[300, 10, 100, 200]), "x0 < x1 and y0 < y1"),
        (dict(frame_idx=0, box=[10, 10, 600, 200]), "box .* outside the frame"),
        (dict(frame_idx=0, box=[10, 10, 20]), r"box must be \(x0, y0, x1, y1\)"),
        (
            dict(frame_idx=0, points=[[10, 10], [20, 20]], labels=[1]),
            "labels must have one entry per point: 2 points",
        ),
        (dict(frame_idx=0, points=[10, 10, 20], labels=[1]), r"points must have shape \(P, 2\)"),
        (
            dict(frame_idx=0, points=[[10, 10]], labels=[7]),
            r"labels must be 1 \(positive\) or 0 \(negative\)",
        ),
        (dict(frame_idx=0, points=[[float("nan"), 10]], labels=[1]), "finite"),
    ],
)
def test_bad_point_and_box_prompts_are_refused(session, kwargs, message) -> None:
    predictor, state = session
    before = list(state["obj_ids"])
    with pytest.raises(ValueError, match=message):
        predictor.add_new_points_or_box(state, obj_id=1, **kwargs)
    assert state["obj_ids"] == before, "a refused prompt must not create the object"


def test_bad_masks_are_refused(session) -> None:
    predictor, state = session
    with pytest.raises(
        ValueError, match=r"mask must have the video's size \(H, W\) = \(270, 480\), got \(100, 100\)"
    ):
        predictor.add_new_mask(state, 0, 1, np.ones((100, 100), dtype=bool))
    with pytest.raises(ValueError, match="frame_idx 8 is outside"):
        predictor.add_new_mask(state, 8, 1, np.ones((H, W), dtype=bool))


def test_valid_edge_prompts_are_accepted_and_bad_propagation_ranges_refused(session) -> None:
    predictor, state = session
    predictor.reset_state(state)
    _, obj_ids, masks = predictor.add_new_points_or_box(
        state, T - 1, 1, points=[[0, 0], [W, H]], labels=[1, 0]
    )
    assert obj_ids == [1] and masks.shape == (1, 1, H, W)
    predictor.add_new_points_or_box(state, 0, 2, box=[0, 0, W, H])
    with pytest.raises(ValueError, match="start frame 12 is outside"):
        next(predictor.propagate_in_video(state, start_frame_idx=12))
    with pytest.raises(ValueError, match="max_frame_num_to_track must be >= 0"):
        next(predictor.propagate_in_video(state, max_frame_num_to_track=-2))
