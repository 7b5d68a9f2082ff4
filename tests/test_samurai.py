"""SAMURAI's motion-aware choice (``sam2long.motion``) on the pathway tree: its rules, the candidates'
boxes, how the combination reduces to its parts, and several objects in one pass (CPU, 256 px, seeded
random weights). Parity with the official code: ``tests/test_tracker_golden_parity.py``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.engine import Candidates
from sam2long import build_sam2long_video_predictor
from sam2long.config import SAM2LongConfig
from sam2long.memory_policy import FrameRecord, plan_memory
from sam2long.motion import KalmanState, MotionConfig, MotionState, box_iou, motion_scores

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
NUM_FRAMES = 8


# --- the rules, on plain numbers ------------------------------------------------------------------


def test_box_iou_is_samurais_overlap() -> None:
    assert box_iou((0.0, 0.0, 10.0, 10.0), (0, 0, 10, 10)) == 1.0
    assert box_iou((0.0, 0.0, 10.0, 10.0), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0.0, 0.0, 10.0, 10.0), (20, 20, 30, 30)) == 0.0
    assert box_iou((0.0, 0.0, 10.0, 10.0), (0, 0, 0, 0)) == 0.0, "an empty candidate scores 0"


def test_kalman_filter_follows_constant_velocity() -> None:
    state = KalmanState.start((0, 0, 10, 20))
    for t in range(1, 30):
        state = state.predict().correct((3 * t, 0, 3 * t + 10, 20))
    predicted = state.predict().box
    assert predicted[0] == pytest.approx(90, abs=0.5) and predicted[2] == pytest.approx(100, abs=0.5)
    assert predicted[1] == pytest.approx(0, abs=1e-6) and predicted[3] == pytest.approx(20, abs=1e-6)


def test_state_machine_warm_up_motion_and_restart() -> None:
    config = MotionConfig(weight=0.5, warmup=2, min_iou=0.3)
    boxes = torch.tensor([[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 0, 0]], dtype=torch.float32)
    ious = torch.tensor([0.6, 0.9, 0.1])
    state = MotionState()
    first = motion_scores(state, config, ious, boxes)
    assert first.motion_ious is None and torch.equal(first.scores, ious), "no filter yet: predicted IoU"
    state = state.after(config, first.predicted, boxes[1].tolist(), 0.9)
    assert state.stable_frames == 1
    warm = motion_scores(state, config, ious, boxes)
    assert warm.motion_ious is None, "warm-up frames choose by predicted IoU"
    state = state.after(config, warm.predicted, boxes[1].tolist(), 0.9)
    assert state.stable_frames == 2
    moving = motion_scores(state, config, torch.tensor([0.9, 0.6, 0.1]), boxes)
    assert moving.motion_ious is not None and moving.motion_ious[1] > 0.9 and moving.motion_ious[0] == 0
    assert int(torch.argmax(moving.scores)) == 1, "the box where the object is predicted wins"
    assert moving.scores[0] == pytest.approx(0.5 * 0.9)
    lost = state.after(config, moving.predicted, boxes[1].tolist(), 0.2)
    assert lost.stable_frames == 0 and lost.predicted(config) is None, "a poor choice restarts the filter"


def test_samurai_memory_rule_gates_by_motion_and_skips_the_first_tracked_frame() -> None:
    def record(step, iou=0.9, obj=1.0, motion=None):
        return FrameRecord(step, step, iou, obj, motion)

    history = [record(1), record(2), record(3, motion=-0.5), record(4, iou=0.4), record(5, motion=0.8), record(6)]
    plan = plan_memory(
        history, 7, num_maskmem=7, max_obj_ptrs_in_encoder=16, num_frames=50, iou_threshold=0.5,
        rule="samurai", motion_threshold=0.0,
    )
    assert [r.step for r in plan.kept] == [2, 5, 6], "motion <= 0 and low IoU are out, step 1 never counts"
    assert [(r.step, r.position) for r in plan.spatial] == [(2, 4), (5, 5), (6, 6)]
    assert [(r.step, r.position) for r in plan.pointers] == [(6, 1), (5, 2), (4, 3), (3, 4), (2, 5), (1, 6)]


def test_candidate_boxes_are_the_tight_boxes_of_the_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = torch.randn(2, 3, 32, 32, generator=gen) - 2.5
    masks[1, 2] = -1.0  # empty
    candidates = Candidates(masks[..., ::4, ::4], masks, torch.rand(2, 3), torch.zeros(2, 3, 8), torch.zeros(2, 1))
    boxes = candidates.boxes()
    for b in range(2):
        for k in range(3):
            found = torch.argwhere(masks[b, k] > 0)
            if len(found) == 0:
                assert boxes[b, k].tolist() == [0, 0, 0, 0]
                continue
            (y0, x0), (y1, x1) = found.min(dim=0).values.tolist(), found.max(dim=0).values.tolist()
            assert boxes[b, k].tolist() == [x0, y0, x1, y1]


# --- on the model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames(first_frames) -> Path:
    return first_frames(NUM_FRAMES)


@pytest.fixture(scope="module")
def ckpt(make_checkpoint) -> Path:
    return make_checkpoint(CFG, seed=0, obj_score_bias=1.0)


def _predictor(ckpt: Path, config, **kw):
    return build_sam2long_video_predictor(
        CFG, ckpt, device="cpu", config=config, hydra_overrides_extra=OVERRIDES, apply_postprocessing=False, **kw
    )


def _box_mask() -> np.ndarray:
    mask = np.zeros((270, 480), dtype=bool)
    mask[100:200, 150:300] = True
    return mask


PROMPTS = {
    1: lambda p, s: p.add_new_points_or_box(s, 0, 1, box=[150, 100, 300, 200]),
    2: lambda p, s: p.add_new_points_or_box(s, 0, 2, points=[[350, 120]], labels=[1]),
    3: lambda p, s: p.add_new_mask(s, 0, 3, _box_mask()),
}


def _run(predictor, frames: Path, objects=(1, 2, 3), observer=None) -> dict[int, torch.Tensor]:
    state = predictor.init_state(str(frames))
    for obj in objects:
        PROMPTS[obj](predictor, state)
    return {f: m.clone() for f, _, m in predictor.propagate_in_video(state, observer=observer)}


# Short clips: a 2-frame warm-up lets the motion term decide most frames.
SAMURAI = SAM2LongConfig.from_preset("samurai", motion_warmup=2)


def test_samurai_preset_sets_the_model_threshold(ckpt: Path) -> None:
    predictor = _predictor(ckpt, "samurai")
    assert predictor.min_obj_score_logits == -1.0
    assert predictor.tracker.candidate_details == {"boxes"}
    with pytest.raises(ValueError, match="min_obj_score_logits"):
        predictor.tracker.check_model(_predictor(ckpt, "official"))


def test_motion_weight_zero_is_sam2long_bit_for_bit(ckpt: Path, frames: Path) -> None:
    plain = _run(_predictor(ckpt, "official"), frames)
    weighted = _run(_predictor(ckpt, SAM2LongConfig.from_preset("sam2long-samurai", motion_weight=0.0)), frames)
    assert sorted(plain) == sorted(weighted) == list(range(NUM_FRAMES))
    for f in plain:
        assert torch.equal(plain[f], weighted[f]), f


def test_samurai_objects_alone_equal_objects_in_one_pass(ckpt: Path, frames: Path) -> None:
    records = []
    together = _run(_predictor(ckpt, SAMURAI), frames, observer=records.append)
    separate = _run(_predictor(ckpt, SAMURAI, batch_objects=False), frames)
    motion = [r.extras["motion"] for r in records if r.extras and r.extras.get("motion")]
    assert any(m[0]["motion_iou"] is not None for m in motion), "the motion term decided some frames"
    for k, obj in enumerate((1, 2, 3)):
        alone = _run(_predictor(ckpt, SAMURAI, batch_objects=False), frames, objects=(obj,))
        for f in together:
            assert torch.equal(alone[f][0], separate[f][k]), (obj, f)
            a, b = together[f][k] > 0, alone[f][0] > 0
            union = (a | b).sum().item()
            assert union == 0 or (a & b).sum().item() / union >= 0.999, (obj, f)
            assert math.isclose((together[f][k] - alone[f][0]).abs().max().item(), 0.0, abs_tol=1e-3), (obj, f)


def test_combinations_are_points_of_one_settings_space() -> None:
    """Each combination reduces to its parts by settings alone (the tracker code is one)."""
    samurai = SAM2LongConfig.from_preset("samurai")
    combined = SAM2LongConfig.from_preset("sam2long-samurai")
    assert SAM2LongConfig.from_preset("sam2long-samurai", motion_weight=None) == SAM2LongConfig()
    assert combined.motion() == samurai.motion()
    single = SAM2LongConfig.resolve(
        combined,
        num_pathways=1,
        iou_threshold=0.5,
        memory_modulation=None,
        memory_rule="samurai",
        object_threshold=-1.0,
    )
    assert single == samurai
    dam4sam = SAM2LongConfig.from_preset("dam4sam")
    assert SAM2LongConfig.from_preset("sam2long-dam4sam", num_pathways=1) == dam4sam
    assert SAM2LongConfig.resolve(dam4sam, num_pathways=3, memory_rule="sam2long", memory_modulation=(0.95, 1.05)) == SAM2LongConfig()
