"""SAM2VideoPredictor behaviour on real frames with a tiny seeded model (CPU, 256 px), plus the
mask utilities it relies on (connected components, hole filling, boxes, point bookkeeping)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2 import prompt_inputs
from sam2.build_sam import build_sam2_video_predictor
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from sam2.sam2_video_predictor import SAM2VideoPredictor, SAM2VideoPredictorVOS
from sam2.utils import mask_postprocess, misc, video_frames

BEDROOM = Path(__file__).parent / "assets" / "bedroom"
HEIGHT, WIDTH = 270, 480
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _build(extra: tuple[str, ...] = ()) -> SAM2VideoPredictor:
    return build_sam2_video_predictor(
        CONFIG,
        device="cpu",
        apply_postprocessing=False,
        hydra_overrides_extra=["++model.image_size=256", *extra],
    )


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state_dict = _build().state_dict()
    # A random object-score head would call every object absent; bias it towards "present".
    state_dict["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(1.0)
    return state_dict


@pytest.fixture(scope="module")
def predictor(weights: dict[str, torch.Tensor]) -> SAM2VideoPredictor:
    model = _build()
    model.load_state_dict(weights)
    return model


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """The first four bedroom frames, in memory (the model loads them like a folder)."""
    return np.stack([np.array(Image.open(BEDROOM / f"{i:05d}.jpg").convert("RGB")) for i in range(4)])


def _ellipse_mask() -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return ((yy - 150) / 70.0) ** 2 + ((xx - 240) / 90.0) ** 2 <= 1.0


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


# ---------------------------------------------------------------------------- predictor


def test_prompts_return_all_objects_at_video_resolution(predictor: SAM2VideoPredictor) -> None:
    state = predictor.init_state(str(BEDROOM))
    assert state["num_frames"] == 8 and (state["video_height"], state["video_width"]) == (HEIGHT, WIDTH)
    mask = _ellipse_mask()
    frame_idx, obj_ids, masks = predictor.add_new_mask(state, 0, 7, mask)
    assert (frame_idx, obj_ids, masks.shape) == (0, [7], (1, 1, HEIGHT, WIDTH))
    # the SAM 2.1 configs output a mask prompt as is: it comes back at the video resolution
    assert _iou(masks[0, 0] > 0, torch.from_numpy(mask)) > 0.97

    frame_idx, obj_ids, masks = predictor.add_new_points_or_box(state, 2, 3, points=[[120, 200]], labels=[1])
    assert (frame_idx, obj_ids, masks.shape) == (2, [7, 3], (2, 1, HEIGHT, WIDTH))
    # object 7 has no output on frame 2 yet, so it is reported absent there
    assert torch.all(masks[0] == NO_OBJ_SCORE) and masks[1].max() > NO_OBJ_SCORE
    assert state["temp_output_dict_per_obj"][1]["cond_frame_outputs"].keys() == {2}


def test_prompt_validation(predictor: SAM2VideoPredictor, frames: np.ndarray) -> None:
    state = predictor.init_state(frames[:2])
    with pytest.raises(ValueError, match="together"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[1, 2]])
    with pytest.raises(ValueError, match="at least one"):
        predictor.add_new_points_or_box(state, 0, 1)
    with pytest.raises(ValueError, match="box"):
        predictor.add_new_points_or_box(state, 0, 1, box=[0, 0, 5, 5], clear_old_points=False)
    with pytest.raises(ValueError, match="2-D"):
        predictor.add_new_mask(state, 0, 1, np.zeros((2, 4, 4), bool))
    assert state["obj_ids"] == []  # invalid prompts create no object
    with pytest.raises(RuntimeError, match="No input points or masks"):
        list(predictor.propagate_in_video(state))


def test_clicks_and_box_become_model_space_points(predictor: SAM2VideoPredictor, frames: np.ndarray) -> None:
    state = predictor.init_state(frames[:2])
    predictor.add_new_points_or_box(state, 0, 1, points=[[240, 135]], labels=[1], box=[0, 0, 480, 270])
    predictor.add_new_points_or_box(state, 0, 1, points=[[48, 27]], labels=[0], clear_old_points=False)
    inputs = state["point_inputs_per_obj"][0][0]
    expected = torch.tensor([[[0.0, 0.0], [256.0, 256.0], [128.0, 128.0], [25.6, 25.6]]])
    torch.testing.assert_close(inputs["point_coords"], expected)
    assert inputs["point_labels"].tolist() == [[2, 3, 1, 0]]
    predictor.add_new_points_or_box(state, 0, 1, points=[[0.5, 0.5]], labels=[1], normalize_coords=False)
    torch.testing.assert_close(
        state["point_inputs_per_obj"][0][0]["point_coords"], torch.tensor([[[128.0, 128.0]]])
    )


def test_forward_and_reverse_propagation(predictor: SAM2VideoPredictor, frames: np.ndarray) -> None:
    state = predictor.init_state(frames)
    predictor.add_new_mask(state, 0, 1, _ellipse_mask())
    predictor.add_new_points_or_box(state, 2, 2, box=[260, 40, 420, 230])
    forward = list(predictor.propagate_in_video(state))
    assert [f for f, _, _ in forward] == [0, 1, 2, 3]
    for _, obj_ids, masks in forward:
        assert obj_ids == [1, 2] and masks.shape == (2, 1, HEIGHT, WIDTH)
        assert torch.isfinite(masks).all()
    # object 2 is tracked on frames 0-1, before its only prompt (memory stored in bfloat16)
    obj2 = state["output_dict_per_obj"][1]
    assert obj2["non_cond_frame_outputs"].keys() == {0, 1, 3}
    assert obj2["non_cond_frame_outputs"][0]["maskmem_features"].dtype == torch.bfloat16
    assert obj2["cond_frame_outputs"][2]["maskmem_features"] is not None
    assert state["frames_tracked_per_obj"][1][1] == {"reverse": False}

    backward = list(
        predictor.propagate_in_video(state, start_frame_idx=3, reverse=True, max_frame_num_to_track=2)
    )
    assert [f for f, _, _ in backward] == [3, 2, 1]
    assert state["frames_tracked_per_obj"][1][1] == {"reverse": True}
    # on its prompted frame, object 2 returns its prompt result in both directions
    assert torch.equal(backward[1][2][1], forward[2][2][1])
    assert list(predictor.propagate_in_video(state, start_frame_idx=0, reverse=True)) == []


def test_objects_are_tracked_independently(predictor: SAM2VideoPredictor, frames: np.ndarray) -> None:
    together = predictor.init_state(frames[:3])
    predictor.add_new_mask(together, 0, 1, _ellipse_mask())
    predictor.add_new_points_or_box(together, 0, 2, points=[[300, 60]], labels=[1])
    joint = [masks for _, _, masks in predictor.propagate_in_video(together)]

    alone = predictor.init_state(frames[:3])
    predictor.add_new_points_or_box(alone, 0, 2, points=[[300, 60]], labels=[1])
    single = [masks for _, _, masks in predictor.propagate_in_video(alone)]
    for joint_masks, single_masks in zip(joint, single):
        assert torch.equal(joint_masks[1:], single_masks)


def test_correction_prompts(predictor: SAM2VideoPredictor, frames: np.ndarray) -> None:
    state = predictor.init_state(frames[:3])
    predictor.add_new_points_or_box(state, 0, 1, points=[[120, 200]], labels=[1])
    list(predictor.propagate_in_video(state))
    outputs = state["output_dict_per_obj"][0]
    tracked = outputs["non_cond_frame_outputs"][2]["pred_masks"]
    # a click on a tracked frame corrects it (non-conditioning), starting from the tracked logits
    _, _, masks = predictor.add_new_points_or_box(state, 2, 1, points=[[400, 60]], labels=[1])
    corrected = state["temp_output_dict_per_obj"][0]["non_cond_frame_outputs"][2]["pred_masks"]
    assert not torch.equal(corrected, tracked)
    predictor.propagate_in_video_preflight(state)
    assert outputs["non_cond_frame_outputs"][2]["pred_masks"] is corrected
    assert outputs["cond_frame_outputs"].keys() == {0}


def test_corrections_as_conditioning_frames_clear_nearby_memories(
    weights: dict[str, torch.Tensor], frames: np.ndarray
) -> None:
    model = _build(
        ("++model.clear_non_cond_mem_around_input=true", "++model.add_all_frames_to_correct_as_cond=true")
    )
    model.load_state_dict(weights)
    state = model.init_state(frames)
    model.add_new_points_or_box(state, 0, 1, points=[[120, 200]], labels=[1])
    list(model.propagate_in_video(state))
    outputs = state["output_dict_per_obj"][0]
    assert outputs["non_cond_frame_outputs"].keys() == {1, 2, 3}
    model.add_new_points_or_box(state, 3, 1, points=[[300, 100]], labels=[1])
    model.propagate_in_video_preflight(state)
    # the correction became a conditioning frame and the (possibly outdated) memories within
    # num_maskmem frames of it were dropped
    assert outputs["cond_frame_outputs"].keys() == {0, 3}
    assert outputs["non_cond_frame_outputs"] == {}
    assert [f for f, _, _ in model.propagate_in_video(state)] == [0, 1, 2, 3]


def test_clear_prompts_remove_object_and_reset(predictor: SAM2VideoPredictor, frames: np.ndarray) -> None:
    state = predictor.init_state(frames[:2])
    predictor.add_new_points_or_box(state, 0, 1, points=[[120, 200]], labels=[1])
    predictor.add_new_points_or_box(state, 1, 2, points=[[300, 60]], labels=[1])
    predictor.add_new_mask(state, 0, 3, _ellipse_mask())
    before = dict((f, m) for f, _, m in predictor.propagate_in_video(state))

    obj_ids, updated = predictor.remove_object(state, 2)
    assert obj_ids == [1, 3] and state["obj_id_to_idx"] == {1: 0, 3: 1}
    assert [f for f, _ in updated] == [1]
    assert torch.equal(updated[0][1], before[1][[0, 2]])
    assert len(state["output_dict_per_obj"]) == 2 and state["point_inputs_per_obj"][1] == {}
    assert state["mask_inputs_per_obj"][1].keys() == {0}  # object 3's mask prompt moved to index 1
    assert predictor.remove_object(state, 99) == ([1, 3], [])
    with pytest.raises(RuntimeError, match="99"):
        predictor.remove_object(state, 99, strict=True)

    frame_idx, obj_ids, masks = predictor.clear_all_prompts_in_frame(state, 0, 3)
    outputs = state["output_dict_per_obj"][1]
    assert (frame_idx, obj_ids) == (0, [1, 3]) and state["mask_inputs_per_obj"][1] == {}
    assert outputs["cond_frame_outputs"] == {} and 0 in outputs["non_cond_frame_outputs"]
    assert 0 not in state["frames_tracked_per_obj"][1]
    assert torch.equal(masks[1], before[0][2])  # the downgraded output is still shown
    predictor.clear_all_prompts_in_frame(state, 0, 42, need_output=False)
    assert state["obj_ids"] == [1, 3]  # unknown ids are not created by clearing

    predictor.reset_state(state)
    assert state["obj_ids"] == [] and state["output_dict_per_obj"] == {}
    predictor.add_new_points_or_box(state, 1, 5, points=[[10, 10]], labels=[1])
    assert [f for f, _, _ in predictor.propagate_in_video(state)] == [1]


def test_init_state_from_video_file_and_async_loading(
    predictor: SAM2VideoPredictor, frames: np.ndarray, tmp_path: Path
) -> None:
    import cv2

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    state = predictor.init_state(str(path), offload_state_to_cpu=True)
    assert state["num_frames"] == len(frames) and state["storage_device"] == torch.device("cpu")
    assert (state["video_height"], state["video_width"]) == (HEIGHT, WIDTH)

    eager = predictor.init_state(frames[:2])
    lazy = predictor.init_state(frames[:2], async_loading_frames=True)
    results = []
    for state in (eager, lazy):
        predictor.add_new_points_or_box(state, 0, 1, points=[[120, 200]], labels=[1])
        results.append([m for _, _, m in predictor.propagate_in_video(state)])
    for eager_masks, lazy_masks in zip(*results):
        assert torch.equal(eager_masks, lazy_masks)


def test_fill_hole_area_fills_small_holes_on_cpu(predictor: SAM2VideoPredictor, frames: np.ndarray) -> None:
    mask = _ellipse_mask()
    mask[140:160, 230:250] = False  # a hole of about 4x3 low-res pixels
    outputs = {}
    for area in (0, 40):
        predictor.fill_hole_area = area
        try:
            state = predictor.init_state(frames[:1])
            outputs[area] = predictor.add_new_mask(state, 0, 1, mask)[2][0, 0]
        finally:
            predictor.fill_hole_area = 0
    assert outputs[0][150, 240] < 0 < outputs[40][150, 240]
    changed = outputs[0] != outputs[40]
    assert changed.any() and changed[:100].sum() == 0 and changed[200:].sum() == 0


def test_vos_predictor_uncompiled_matches_base_predictor(
    predictor: SAM2VideoPredictor, weights: dict[str, torch.Tensor], frames: np.ndarray
) -> None:
    vos = _build(
        (
            "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictorVOS",
            "++model.compile_components=false",
        )
    )
    assert isinstance(vos, SAM2VideoPredictorVOS)
    vos.load_state_dict(weights)
    results = []
    for model in (predictor, vos):
        state = model.init_state(frames[:3])
        model.add_new_points_or_box(state, 1, 1, points=[[120, 200]], labels=[1])
        results.append([m for _, _, m in model.propagate_in_video(state, start_frame_idx=0)])
    for base_masks, vos_masks in zip(*results):
        assert torch.equal(base_masks, vos_masks)


# ---------------------------------------------------------------------------- mask utilities


def _bfs_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference 8-connected labelling: label = 1 + raster index of the component's first pixel."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, np.int64)
    areas = np.zeros(mask.shape, np.int64)
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label = start[0] * width + start[1] + 1
        members, queue = [], deque([start])
        labels[start] = label
        while queue:
            y, x = queue.popleft()
            members.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = label
                        queue.append((ny, nx))
        for member in members:
            areas[member] = len(members)
    return labels, areas


@pytest.mark.parametrize("density", [0.3, 0.5, 0.7])
def test_connected_components_match_reference(density: float) -> None:
    generator = torch.Generator().manual_seed(int(density * 10))
    masks = torch.rand(3, 1, 23, 31, generator=generator) < density
    labels, areas = mask_postprocess.get_connected_components(masks)
    assert labels.dtype == torch.int32 and labels.shape == masks.shape
    height, width = masks.shape[-2:]
    torch_ids = mask_postprocess._component_ids_torch(masks.reshape(3, -1), height, width)
    torch_labels, torch_areas = mask_postprocess._canonical_labels_and_areas(torch_ids, masks.reshape(3, -1))
    for index in range(3):
        expected_labels, expected_areas = _bfs_components(masks[index, 0].numpy())
        np.testing.assert_array_equal(labels[index, 0].numpy(), expected_labels)
        np.testing.assert_array_equal(areas[index, 0].numpy(), expected_areas)
    assert torch.equal(torch_labels.view_as(labels), labels) and torch.equal(
        torch_areas.view_as(areas), areas
    )


def test_connected_components_torch_path_handles_long_snakes() -> None:
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., ::4, :] = True
    mask[..., 0::8, -1] = mask[..., 1::8, -1] = mask[..., 2::8, -1] = mask[..., 3::8, -1] = True
    mask[..., 4::8, 0] = mask[..., 5::8, 0] = mask[..., 6::8, 0] = mask[..., 7::8, 0] = True
    mask[..., 60:, -1] = False
    ids = mask_postprocess._component_ids_torch(mask.reshape(1, -1), 64, 64)
    labels, areas = mask_postprocess._canonical_labels_and_areas(ids, mask.reshape(1, -1))
    assert labels[mask.reshape(1, -1)].unique().tolist() == [1]
    assert torch.all(areas[mask.reshape(1, -1)] == mask.sum())


def test_fill_holes_and_sprinkles() -> None:
    logits = torch.full((1, 1, 12, 12), -5.0)
    logits[..., 2:10, 2:10] = 5.0
    logits[..., 5:7, 5:7] = -3.0  # hole of 4 pixels
    logits[..., 0, 11] = 2.0  # sprinkle of 1 pixel
    filled = mask_postprocess.fill_holes_in_mask_scores(logits, max_area=4)
    assert torch.all(filled[..., 5:7, 5:7] == 0.1)
    assert torch.equal(filled[..., :5, :], logits[..., :5, :])  # background outside stays
    assert torch.equal(mask_postprocess.fill_holes_in_mask_scores(logits, max_area=3), logits)
    cleaned = mask_postprocess.fill_holes_in_mask_scores(logits, max_area=4, max_sprinkle_area=1)
    assert cleaned[0, 0, 0, 11] == -0.1 and torch.all(cleaned[..., 5:7, 5:7] == 0.1)
    with pytest.raises(ValueError):
        mask_postprocess.fill_holes_in_mask_scores(logits, max_area=0)


def test_mask_to_box() -> None:
    masks = torch.zeros(2, 1, 6, 8, dtype=torch.bool)
    masks[0, 0, 1:4, 2:7] = True
    boxes = mask_postprocess.mask_to_box(masks)
    assert boxes.dtype == torch.int32 and boxes.shape == (2, 1, 4)
    assert boxes.tolist() == [[[2, 1, 6, 3]], [[8, 6, -1, -1]]]


def test_concat_points_appends_along_the_point_axis() -> None:
    first = prompt_inputs.concat_points(None, torch.ones(1, 1, 2), torch.ones(1, 1, dtype=torch.int32))
    both = prompt_inputs.concat_points(first, torch.zeros(1, 2, 2), torch.zeros(1, 2, dtype=torch.int32))
    assert both["point_coords"].shape == (1, 3, 2) and both["point_labels"].tolist() == [[1, 0, 0]]


def test_misc_is_the_upstream_compatible_import_path() -> None:
    """``from sam2.utils.misc import ...`` (upstream's path) gives the objects the library itself uses."""
    assert misc.get_connected_components is mask_postprocess.get_connected_components
    assert misc.fill_holes_in_mask_scores is mask_postprocess.fill_holes_in_mask_scores
    assert misc.mask_to_box is mask_postprocess.mask_to_box
    assert misc.concat_points is prompt_inputs.concat_points
    assert misc.load_video_frames is video_frames.load_video_frames
    assert misc.AsyncVideoFrameLoader is misc.PrefetchingVideoFrames is video_frames.PrefetchingVideoFrames
    assert not hasattr(misc, "release_free_heap"), "not an upstream name: imported from sam2.utils.heap"
    assert sorted(misc.__all__) == sorted(name for name in vars(misc) if not name.startswith("_"))
