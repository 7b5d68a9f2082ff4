"""Tests of SAM2ImagePredictor and SAM2Transforms on CPU with the tiny model (256 and 512 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import Normalize, Resize

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.transforms import SAM2Transforms

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
H, W = 120, 160  # a non-square original image
POINTS = np.array([[40.0, 30.0], [110.0, 90.0]])
LABELS = np.array([1, 0])
BOX = np.array([20.0, 15.0, 130.0, 100.0])


@pytest.fixture(scope="module")
def ckpt(make_checkpoint) -> Path:
    return make_checkpoint(TINY, seed=11, obj_score_bias=2.0)


def _predictor(ckpt: Path, size: int, **kwargs) -> SAM2ImagePredictor:
    model = build_sam2(TINY, ckpt, device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"])
    return SAM2ImagePredictor(model, **kwargs)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(ckpt: Path, image: np.ndarray) -> SAM2ImagePredictor:
    pred = _predictor(ckpt, 256)
    pred.set_image(image)
    return pred


# --- transforms ------------------------------------------------------------------------------------


def test_transforms_match_torchvision_pipeline(image: np.ndarray) -> None:
    transforms = SAM2Transforms(resolution=96, mask_threshold=0.0)
    ours = transforms(image)
    chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    expected = Normalize(transforms.mean, transforms.std)(Resize((96, 96))(chw))
    assert ours.shape == (3, 96, 96)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert torch.equal(transforms(Image.fromarray(image)), ours)
    assert torch.equal(transforms.forward_batch([image, image])[1], ours)


def test_transform_coords_and_boxes() -> None:
    transforms = SAM2Transforms(resolution=256, mask_threshold=0.0)
    pixels = torch.tensor([[80.0, 60.0], [160.0, 0.0]])
    mapped = transforms.transform_coords(pixels, normalize=True, orig_hw=(H, W))
    assert torch.allclose(mapped, torch.tensor([[128.0, 128.0], [256.0, 0.0]]))
    assert torch.equal(pixels, torch.tensor([[80.0, 60.0], [160.0, 0.0]]))  # input untouched
    assert torch.allclose(
        transforms.transform_coords(torch.tensor([[0.5, 0.25]])), torch.tensor([[128.0, 64.0]])
    )
    boxes = transforms.transform_boxes(
        torch.tensor([[0.0, 0.0, 160.0, 120.0]]), normalize=True, orig_hw=(H, W)
    )
    assert boxes.shape == (1, 2, 2)
    assert torch.allclose(boxes, torch.tensor([[[0.0, 0.0], [256.0, 256.0]]]))
    with pytest.raises(ValueError):
        transforms.transform_coords(pixels, normalize=True)


def test_postprocess_fills_holes_and_removes_sprinkles() -> None:
    logits = torch.full((1, 1, 32, 32), -5.0)
    logits[..., 4:20, 4:20] = 5.0
    logits[..., 10, 10] = -5.0  # one-pixel hole inside the object
    logits[..., 28, 28] = 5.0  # one-pixel speck in the background
    plain = SAM2Transforms(32, 0.0).postprocess_masks(logits, (32, 32))
    assert plain[0, 0, 10, 10] < 0 and plain[0, 0, 28, 28] > 0
    cleaned = SAM2Transforms(32, 0.0, max_hole_area=4, max_sprinkle_area=4).postprocess_masks(
        logits, (32, 32)
    )
    assert cleaned[0, 0, 10, 10] > 0 and cleaned[0, 0, 28, 28] < 0
    assert torch.equal(cleaned[0, 0, 4:20, 4:20] > 0, torch.ones(16, 16, dtype=torch.bool))
    upsampled = SAM2Transforms(32, 0.0).postprocess_masks(logits, (H, W))
    assert upsampled.shape == (1, 1, H, W)


# --- predictor -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [256, 512])
def test_feature_sizes_follow_image_size(ckpt: Path, image: np.ndarray, size: int) -> None:
    pred = _predictor(ckpt, size)
    assert pred._bb_feat_sizes == [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    pred.set_image(image)
    assert pred.get_image_embedding().shape == (1, 256, size // 16, size // 16)
    assert [f.shape for f in pred._features["high_res_feats"]] == [
        (1, 32, size // 4, size // 4),
        (1, 64, size // 8, size // 8),
    ]
    masks, ious, low = pred.predict(POINTS[:1], LABELS[:1], multimask_output=True)
    assert masks.shape == (3, H, W) and ious.shape == (3,) and low.shape == (3, size // 4, size // 4)


def test_predict_requires_an_image(ckpt: Path) -> None:
    pred = _predictor(ckpt, 256)
    with pytest.raises(RuntimeError):
        pred.predict(POINTS, LABELS)
    with pytest.raises(RuntimeError):
        pred.get_image_embedding()


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["points", "box", "points+box", "mask", "points+mask"])
def test_prompt_shapes(predictor: SAM2ImagePredictor, prompt: str, multimask: bool) -> None:
    low_prev = predictor.predict(POINTS[:1], LABELS[:1], multimask_output=False)[2]
    kwargs = {}
    if "points" in prompt:
        kwargs.update(point_coords=POINTS, point_labels=LABELS)
    if "box" in prompt:
        kwargs["box"] = BOX
    if "mask" in prompt:
        kwargs["mask_input"] = low_prev
    masks, ious, low = predictor.predict(**kwargs, multimask_output=multimask)
    n = 3 if multimask else 1
    assert masks.shape == (n, H, W) and ious.shape == (n,) and low.shape == (n, 64, 64)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert np.abs(low).max() <= 32.0  # low-res logits are clamped


def test_prompts_change_the_prediction(predictor: SAM2ImagePredictor) -> None:
    by_points = predictor.predict(POINTS, LABELS, multimask_output=False, return_logits=True)[0]
    by_box = predictor.predict(box=BOX, multimask_output=False, return_logits=True)[0]
    assert not np.allclose(by_points, by_box)


def test_logits_threshold_to_binary_masks(predictor: SAM2ImagePredictor) -> None:
    logits, ious, low = predictor.predict(POINTS, LABELS, return_logits=True)
    binary, ious_b, low_b = predictor.predict(POINTS, LABELS)
    assert np.array_equal(binary.astype(bool), logits > 0.0)
    assert np.array_equal(ious, ious_b) and np.array_equal(low, low_b)
    assert 0 < (logits > 0).mean() < 1  # a real mask, not everything / nothing


def test_normalized_coords_equal_pixel_coords(predictor: SAM2ImagePredictor) -> None:
    in_pixels = predictor.predict(POINTS, LABELS, return_logits=True)
    normalized = predictor.predict(
        POINTS / np.array([W, H]), LABELS, normalize_coords=False, return_logits=True
    )
    for a, b in zip(in_pixels, normalized):
        assert np.allclose(a, b, atol=1e-4)


def test_multiple_boxes_give_a_batch(predictor: SAM2ImagePredictor) -> None:
    boxes = np.stack([BOX, np.array([0.0, 0.0, W - 1.0, H - 1.0])])
    masks, ious, low = predictor.predict(box=boxes, multimask_output=False, return_logits=True)
    assert masks.shape == (2, 1, H, W) and ious.shape == (2, 1) and low.shape == (2, 1, 64, 64)
    single = predictor.predict(box=BOX, multimask_output=False, return_logits=True)[0]
    assert np.allclose(masks[0], single, atol=1e-4)


def test_pil_image_matches_numpy(ckpt: Path, image: np.ndarray, predictor: SAM2ImagePredictor) -> None:
    pil_pred = _predictor(ckpt, 256)
    pil_pred.set_image(Image.fromarray(image))
    assert pil_pred._orig_hw == [(H, W)]
    assert torch.equal(pil_pred.get_image_embedding(), predictor.get_image_embedding())


def test_batch_api_matches_single_images(
    ckpt: Path, image: np.ndarray, predictor: SAM2ImagePredictor
) -> None:
    other = np.random.default_rng(1).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)
    batch_pred = _predictor(ckpt, 256)
    batch_pred.set_image_batch([image, other])
    assert batch_pred.get_image_embedding().shape == (2, 256, 16, 16)
    with pytest.raises(RuntimeError):
        predictor.predict_batch([POINTS], [LABELS])  # single-image mode
    masks, ious, lows = batch_pred.predict_batch(
        [POINTS, POINTS[:1] * 0.5], [LABELS, LABELS[:1]], box_batch=[BOX, None], return_logits=True
    )
    assert masks[0].shape == (3, H, W) and masks[1].shape == (3, 90, 70)
    single = predictor.predict(POINTS, LABELS, box=BOX, return_logits=True)
    for got, want in zip((masks[0], ious[0], lows[0]), single):
        assert np.allclose(got, want, atol=1e-4)
    single_pred = _predictor(ckpt, 256)
    single_pred.set_image(other)
    want_other = single_pred.predict(POINTS[:1] * 0.5, LABELS[:1], return_logits=True)
    for got, want in zip((masks[1], ious[1], lows[1]), want_other):
        assert np.allclose(got, want, atol=1e-4)


def test_reset_clears_the_image(ckpt: Path, image: np.ndarray) -> None:
    pred = _predictor(ckpt, 256)
    pred.set_image(image)
    pred.reset_predictor()
    with pytest.raises(RuntimeError):
        pred.predict(POINTS, LABELS)
