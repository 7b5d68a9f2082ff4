"""The CUDA subset (``pytest -m cuda``): SAM 2, SAM2Long and the image predictor on a GPU.

On CUDA ``dtype="auto"`` means bf16 autocast (upstream's setting there); these tests check that it
resolves so, that bf16 masks agree with float32 ones on the same GPU, and that a session's tensors
live on the model's device. ``benchmarks/gpu_check.sh`` runs them; without CUDA they are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sam2.build_sam import build_sam2, build_sam2_video_predictor
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2long import build_sam2long_video_predictor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"
    ),
]

DEVICE = "cuda"
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SIZE = 512
NUM_FRAMES = 6
# bf16 vs float32 on the same device: masks drift by a few boundary pixels, never by a whole object.
MIN_IOU = 0.9


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint) -> Path:
    return make_checkpoint(CONFIG, seed=3, obj_score_bias=5.0)


@pytest.fixture(scope="module")
def frames_dir(first_frames) -> Path:
    return first_frames(NUM_FRAMES)


def _prompt(predictor: Any, state: dict[str, Any]) -> None:
    """Object 1: a box on frame 0; object 2: a mask on frame 0 (480x270 frames)."""
    predictor.add_new_points_or_box(state, 0, 1, box=[40.0, 60.0, 200.0, 220.0])
    mask = np.zeros((state["video_height"], state["video_width"]), dtype=bool)
    mask[80:200, 280:420] = True
    predictor.add_new_mask(state, 0, 2, mask)


def _track(predictor: Any, frames_dir: Path) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Prompt two objects and propagate; the session and the masks yielded per frame."""
    state = predictor.init_state(str(frames_dir))
    _prompt(predictor, state)
    masks = []
    for frame_idx, obj_ids, frame_masks in predictor.propagate_in_video(state):
        assert obj_ids == [1, 2]
        assert frame_masks.device.type == DEVICE, f"frame {frame_idx}: masks on {frame_masks.device}"
        assert frame_masks.dtype == torch.float32, f"frame {frame_idx}: masks in {frame_masks.dtype}"
        masks.append(frame_masks)
    assert len(masks) == NUM_FRAMES
    return state, masks


def _assert_agree(bf16: list[torch.Tensor], fp32: list[torch.Tensor]) -> None:
    """Per frame and object: both masks non-empty, IoU >= ``MIN_IOU``; and bf16 really differs somewhere."""
    for frame_idx, (a, b) in enumerate(zip(bf16, fp32)):
        assert torch.isfinite(a).all(), f"frame {frame_idx}: non-finite bf16 logits"
        for obj, (ma, mb) in enumerate(zip(a[:, 0] > 0, b[:, 0] > 0)):
            assert ma.any() and mb.any(), f"frame {frame_idx}, object {obj}: empty mask"
            iou = (ma & mb).sum().item() / (ma | mb).sum().item()
            assert iou >= MIN_IOU, f"frame {frame_idx}, object {obj}: bf16 vs fp32 IoU {iou:.4f}"
    assert any(not torch.equal(a, b) for a, b in zip(bf16, fp32)), "bf16 logits equal fp32: autocast inactive"


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested dicts, mappings, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif hasattr(value, "values"):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _video_predictor(builder: Callable[..., Any], checkpoint: Path, dtype: str, **kwargs: Any) -> Any:
    return builder(
        CONFIG,
        checkpoint,
        device=DEVICE,
        dtype=dtype,
        hydra_overrides_extra=[f"++model.image_size={SIZE}"],
        **kwargs,
    )


def test_sam2_auto_is_bf16_and_agrees_with_fp32(checkpoint: Path, frames_dir: Path) -> None:
    auto = _video_predictor(build_sam2_video_predictor, checkpoint, "auto")
    assert auto.precision.dtype == torch.bfloat16 and auto.precision.device_type == DEVICE
    _, bf16 = _track(auto, frames_dir)
    fp32 = _video_predictor(build_sam2_video_predictor, checkpoint, "float32")
    assert fp32.precision.dtype == torch.float32
    _, masks = _track(fp32, frames_dir)
    _assert_agree(bf16, masks)


@pytest.mark.parametrize("num_pathways", [1, 3])
def test_sam2long_auto_is_bf16_and_agrees_with_fp32(
    checkpoint: Path, frames_dir: Path, num_pathways: int
) -> None:
    auto = _video_predictor(build_sam2long_video_predictor, checkpoint, "auto", num_pathways=num_pathways)
    assert auto.precision.dtype == torch.bfloat16
    _, bf16 = _track(auto, frames_dir)
    fp32 = _video_predictor(build_sam2long_video_predictor, checkpoint, "float32", num_pathways=num_pathways)
    _, masks = _track(fp32, frames_dir)
    _assert_agree(bf16, masks)


def test_session_tensors_live_on_the_model_device(checkpoint: Path, frames_dir: Path) -> None:
    predictor = _video_predictor(build_sam2_video_predictor, checkpoint, "auto")
    assert next(predictor.parameters()).device.type == DEVICE
    state, _ = _track(predictor, frames_dir)
    assert state["device"].type == DEVICE and state["storage_device"].type == DEVICE
    assert state["images"][NUM_FRAMES - 1].device.type == DEVICE
    stored = list(_tensors(state["output_dict_per_obj"]))
    stored += list(_tensors(state["cached_features"]))
    stored += list(_tensors(state["constants"]))
    assert len(stored) > 10
    elsewhere = sorted({str(t.device) for t in stored if t.device.type != DEVICE})
    assert not elsewhere, f"session tensors on {elsewhere}"
    assert len(state["output_dict_per_obj"][0]["non_cond_frame_outputs"]) == NUM_FRAMES - 1


def test_image_predictor_on_cuda_auto_agrees_with_fp32(checkpoint: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(270, 480, 3), dtype=np.uint8)
    box = np.array([60.0, 40.0, 300.0, 220.0])
    results = {}
    for dtype in ("auto", "float32"):
        model = build_sam2(CONFIG, checkpoint, device=DEVICE, dtype=dtype)
        predictor = SAM2ImagePredictor(model)
        predictor.set_image(image)
        assert predictor.get_image_embedding().device.type == DEVICE
        masks, scores, low_res = predictor.predict(box=box, multimask_output=False)
        assert masks.shape == (1, 270, 480) and scores.shape == (1,) and low_res.shape == (1, 256, 256)
        assert np.isfinite(scores).all() and np.isfinite(low_res).all()
        results[predictor.precision.dtype] = masks[0] > 0
    bf16, fp32 = results[torch.bfloat16], results[torch.float32]
    assert bf16.any() and fp32.any()
    iou = (bf16 & fp32).sum() / (bf16 | fp32).sum()
    assert iou >= MIN_IOU, f"image predictor bf16 vs fp32 IoU {iou:.4f}"
