"""DAM4SAM's distractor-aware memory (``sam2long.distractor``, ``sam2long.distractor_memory``): its rules
on hand-made cases, and the tracker on the model (CPU, 256 px, seeded random weights). Frames joining the
DRM, compared with the official code: ``tests/test_tracker_golden_parity.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.prompt_inputs import mask_prompt
from sam2long import build_sam2long_video_predictor
from sam2long.distractor import (
    DistractorConfig,
    SizeHistory,
    largest_component,
    mask_box,
    memory_layout,
    plan_ram,
    select_drm,
    should_add,
    vot_box_iou,
)

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256", "++model.fill_hole_area=0"]
NUM_FRAMES = 8


# --- the rules ------------------------------------------------------------------------------------


def test_vot_box_iou_is_the_toolkits_rectangle_overlap() -> None:
    assert vot_box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert vot_box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert vot_box_iou((0, 0, 4, 4), (10, 10, 14, 14)) == 0.0
    # boxes one pixel wide have degenerate raster bounds: the toolkit calls them identical
    assert vot_box_iou((22, 6, 23, 15), (22, 12, 23, 28)) == 1.0
    assert vot_box_iou((15, 15, 26, 15), (11, 7, 11, 18)) == 0.0, "zero areas, non-degenerate bounds"


def test_mask_box_and_largest_component() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:4, 1:3] = True  # 4 px
    mask[6:9, 5:11] = True  # 18 px
    assert mask_box(mask) == (1, 2, 10, 8)
    assert mask_box(np.zeros((3, 3), dtype=bool)) == (0, 0, 0, 0)
    assert mask_box(largest_component(mask)) == (5, 6, 10, 8)


def test_size_history_is_the_median_of_the_latest_non_empty_areas() -> None:
    config = DistractorConfig(size_history=5, size_samples=3)
    sizes = SizeHistory().add(100, config)
    assert sizes.ratio(100) == -1.0, "the first frame has no history"
    for area in (0, 200, 300, 0):
        sizes = sizes.add(area, config)
    sizes = sizes.add(400, config)
    assert sizes.ratio(400) == pytest.approx(400 / 300), "median of (200, 300, 400)"
    assert sizes.ratio(0) == -1.0
    for _ in range(3):
        sizes = sizes.add(0, config)
    sizes = sizes.add(50, config)
    assert sizes.ratio(50) == pytest.approx(50 / np.median([400, 50])), "older areas leave the window"
    sizes = sizes.add(0, config)
    assert sizes.add(60, config).ratio(60) == pytest.approx(60 / 55), "the 400 left the 5-frame window"


def _blob(box, shape=(40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def test_should_add_needs_every_gate_and_a_distracting_alternative() -> None:
    config = DistractorConfig()
    chosen = _blob((5, 5, 14, 14))
    distractor = chosen | _blob((25, 5, 34, 14))  # the chosen object plus a look-alike
    same = chosen | _blob((15, 5, 15, 14))  # one more column: the box barely moves
    calls = []
    area = int(chosen.sum())

    def masks():
        calls.append(1)
        return chosen, [distractor, same]

    added = should_add(config, area, masks, iou=0.9, size_ratio=1.0, frames_since_added=None)
    assert added.added and min(added.box_ious) <= 0.7 and max(added.box_ious) > 0.7
    assert not should_add(config, area, lambda: (chosen, [same]), 0.9, 1.0, None).added
    assert not should_add(config, area, masks, 0.8, 1.0, None).added, "IoU must exceed 0.8"
    assert not should_add(config, area, masks, 0.9, 1.25, None).added, "the object changed size"
    assert not should_add(config, area, masks, 0.9, 1.0, 5).added, "too soon after the last addition"
    assert not should_add(config, 0, masks, 0.9, 1.0, None).added, "the object must be visible"
    assert should_add(config, area, masks, 0.9, 1.0, 6).added
    calls.clear()
    should_add(config, area, masks, 0.5, 1.0, None)
    assert not calls, "masks are read only when the cheap gates pass"


def test_drm_selection_keeps_the_anchor_and_skips_the_adjacent_frame() -> None:
    assert select_drm(30, [0, 10, 20, 29], anchor=0, max_frames=4) == [20, 0, 10]
    assert select_drm(30, [0, 8, 14, 20, 26], anchor=0, max_frames=4) == [26, 0, 20, 14]
    assert select_drm(1, [0], anchor=0, max_frames=4) == [0]


def test_ram_walks_the_stride_grid_past_frames_without_the_object() -> None:
    shown = {29, 27, 25, 20, 10, 5}
    frames, positions = plan_ram(
        30, slots=5, stride=5, visible=lambda f: f in shown, adjacent_visible=lambda f: f in shown, selected={0, 20}
    )
    # slot 0: frame 29; then the grid below it: 25, 20 (selected: skip to 15, absent, 10), 5, then nothing
    assert frames == [29, 25, 10, 5, None]
    assert positions[:4] == [29, 25, 10, 5] and positions[4] <= 0
    layout = memory_layout(2, positions, [f is not None for f in frames])
    # 2 DRM + 5 slots = 7 entries: DRM at the conditioning row 6, RAM oldest first by sorted rank
    assert layout == [(0, 0, 6), (0, 1, 6), (1, 3, 3), (1, 2, 2), (1, 1, 1), (1, 0, 0)]


# --- on the model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames(first_frames) -> Path:
    return first_frames(NUM_FRAMES)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from conftest import checkpoint_state_dict

    state = checkpoint_state_dict(CFG, 0, 1.0)
    state["sam_mask_decoder.iou_prediction_head.layers.2.bias"] += 3.0  # confident: the DRM's IoU gate open
    path = tmp_path_factory.mktemp("dam4sam") / "model.pt"
    torch.save({"model": state}, path)
    return path


def _predictor(ckpt: Path, config, **kw):
    return build_sam2long_video_predictor(CFG, ckpt, device="cpu", config=config, hydra_overrides_extra=OVERRIDES, **kw)


PROMPTS = {
    1: lambda p, s: p.add_new_points_or_box(s, 0, 1, box=[150, 100, 300, 200]),
    2: lambda p, s: p.add_new_points_or_box(s, 0, 2, points=[[350, 120]], labels=[1]),
    3: lambda p, s: p.add_new_points_or_box(s, 0, 3, box=[20, 30, 200, 250]),
}


def _run(predictor, frames: Path, objects=(1, 2, 3), observer=None) -> dict[int, torch.Tensor]:
    state = predictor.init_state(str(frames))
    for obj in objects:
        PROMPTS[obj](predictor, state)
    return {f: m.clone() for f, _, m in predictor.propagate_in_video(state, observer=observer)}


def test_a_box_prompt_becomes_sams_mask_for_it(ckpt: Path, frames: Path) -> None:
    predictor = _predictor(ckpt, "dam4sam")
    state = predictor.init_state(str(frames))
    expected = predictor.box_mask(state, 0, [150, 100, 300, 200])
    _, _, masks = predictor.add_new_points_or_box(state, 0, 1, box=[150, 100, 300, 200])
    obj = state.objects[0]
    assert 0 in obj.mask_inputs and 0 not in obj.point_inputs, "the box was given as a mask"
    assert torch.equal(obj.mask_inputs[0], mask_prompt(expected, (270, 480), 256, torch.device("cpu")))
    out = masks[0, 0] > 0
    assert (out & expected).sum() / (out | expected).sum() > 0.95, "the prompted frame shows that mask"


def test_dam4sam_objects_alone_equal_objects_in_one_pass(ckpt: Path, frames: Path) -> None:
    together = _run(_predictor(ckpt, "dam4sam"), frames)
    separate = _run(_predictor(ckpt, "dam4sam", batch_objects=False), frames)
    for k, obj in enumerate((1, 2, 3)):
        alone = _run(_predictor(ckpt, "dam4sam", batch_objects=False), frames, objects=(obj,))
        for f in together:
            assert torch.equal(alone[f][0], separate[f][k]), (obj, f)
            a, b = together[f][k] > 0, alone[f][0] > 0
            union = (a | b).sum().item()
            assert union == 0 or (a & b).sum().item() / union >= 0.999, (obj, f)


def test_the_tree_keeps_a_distractor_memory_per_pathway(ckpt: Path, frames: Path) -> None:
    records = []
    out = _run(_predictor(ckpt, "sam2long-dam4sam"), frames, objects=(1,), observer=records.append)
    assert sorted(out) == list(range(NUM_FRAMES))
    branched = [r for r in records if r.kind == "branch"]
    assert branched and all(len(r.extras["distractor"]) == 3 for r in branched)


def test_reverse_tracking_is_refused_by_name(ckpt: Path, frames: Path) -> None:
    predictor = _predictor(ckpt, "dam4sam")
    state = predictor.init_state(str(frames))
    predictor.add_new_points_or_box(state, 4, 1, box=[150, 100, 300, 200])
    with pytest.raises(ValueError, match="forward only"):
        list(predictor.propagate_in_video(state, reverse=True))
