"""Numerical parity of single-image inference with upstream sam2==1.1.0 (fp32, CPU).

* ``SAM2ImagePredictor`` at the native 1024 px (upstream's predictor hard-codes the 1024 feature
  sizes) on a real frame: image embedding, low-res logits, full-res logits and binary masks, and
  IoU predictions for point, box, mask and mixed prompts, multimask on and off. It is built with
  the default ``apply_postprocessing=True``, so single-mask outputs go through the dynamic
  multimask fallback.
* ``SAM2Base`` at 256 and 512 px (the sizes CI uses elsewhere): ``forward_image`` features and
  ``track_step`` on a conditioning frame for point, box+point and mask prompts, then one
  memory-conditioned step. This runs twice, with the object-score head biased to "present" and
  to "absent", so both branches of the occlusion handling (mask gating, no-object pointer,
  no-object spatial embedding) are compared.

Both sides run the very same driver functions below; upstream's run in a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from upstream_ref import mask_iou, max_abs_diff, run_both

CONFIGS = ["configs/sam2.1/sam2.1_hiera_t.yaml", "configs/sam2/sam2_hiera_t.yaml"]
MODEL_SIZES = [256, 512]
ATOL = 1e-4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRACK_KEYS = ("pred_masks", "pred_masks_high_res", "obj_ptr", "object_score_logits", "maskmem_features")


def image_predictor_driver(args: dict[str, Any]) -> dict[str, Any]:
    """Embed one image and predict every prompt in ``args["prompts"]`` (runs on both sides)."""
    import torch

    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = build_sam2(args["config"], args["checkpoint"], device="cpu")
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(args["image"].numpy())
    out = {"image_embed": predictor.get_image_embedding().clone()}
    for name, prompt in args["prompts"].items():
        kwargs = {k: v.numpy() for k, v in prompt.items()}
        for multimask in (True, False):
            logits, ious, low_res = predictor.predict(
                **kwargs, multimask_output=multimask, return_logits=True
            )
            masks, _, _ = predictor.predict(**kwargs, multimask_output=multimask)
            out[(name, multimask)] = {
                "logits": torch.from_numpy(logits),
                "masks": torch.from_numpy(masks) > 0,
                "ious": torch.from_numpy(ious),
                "low_res": torch.from_numpy(low_res),
            }
    return out


def model_driver(args: dict[str, Any]) -> dict[str, Any]:
    """``forward_image`` and ``track_step`` outputs per (image size, checkpoint) (runs on both sides)."""
    import torch

    from sam2.build_sam import build_sam2

    def flat(step: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        picked = {k: step[k].clone() for k in keys}
        picked["maskmem_pos_enc"] = [p.clone() for p in step["maskmem_pos_enc"]]
        return picked

    out = {}
    for size in args["sizes"]:
        image = args["images"][size]
        for branch, checkpoint in args["checkpoints"].items():
            model = build_sam2(
                args["config"],
                checkpoint,
                device="cpu",
                apply_postprocessing=False,
                hydra_overrides_extra=[f"++model.image_size={size}"],
            )
            with torch.no_grad():
                backbone = model.forward_image(image)
                _, feats, pos, feat_sizes = model._prepare_backbone_features(backbone)
                res = {
                    "vision_features": backbone["vision_features"].clone(),
                    "backbone_fpn": [f.clone() for f in backbone["backbone_fpn"]],
                    "vision_pos_enc": [p.clone() for p in backbone["vision_pos_enc"]],
                }
                steps = {}
                for name, prompt in args["prompts"][size].items():
                    steps[name] = model.track_step(
                        frame_idx=0,
                        is_init_cond_frame=True,
                        current_vision_feats=feats,
                        current_vision_pos_embeds=pos,
                        feat_sizes=feat_sizes,
                        point_inputs=prompt.get("point_inputs"),
                        mask_inputs=prompt.get("mask_inputs"),
                        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                        num_frames=2,
                        run_mem_encoder=True,
                    )
                    res[name] = flat(steps[name], args["track_keys"])
                memory = {"cond_frame_outputs": {0: steps["point"]}, "non_cond_frame_outputs": {}}
                tracked = model.track_step(
                    frame_idx=1,
                    is_init_cond_frame=False,
                    current_vision_feats=feats,
                    current_vision_pos_embeds=pos,
                    feat_sizes=feat_sizes,
                    point_inputs=None,
                    mask_inputs=None,
                    output_dict=memory,
                    num_frames=2,
                    run_mem_encoder=True,
                )
                res["tracked"] = flat(tracked, args["track_keys"])
            out[(size, branch)] = res
    return out


def predictor_prompts(height: int, width: int) -> dict[str, dict[str, torch.Tensor]]:
    """Prompts in image pixels: points, a box, a low-res mask (logits) and their mixes."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    mask_logits = 8.0 * (1.0 - ((xx - 0.2) / 0.5) ** 2 - ((yy + 0.1) / 0.6) ** 2)
    point = torch.tensor([[0.62 * width, 0.45 * height]])
    return {
        "point": {"point_coords": point, "point_labels": torch.tensor([1])},
        "points": {
            "point_coords": torch.cat([point, torch.tensor([[0.2 * width, 0.75 * height]])]),
            "point_labels": torch.tensor([1, 0]),
        },
        "box": {"box": torch.tensor([0.5 * width, 0.2 * height, 0.88 * width, 0.92 * height])},
        "box_point": {
            "box": torch.tensor([0.5 * width, 0.2 * height, 0.88 * width, 0.92 * height]),
            "point_coords": torch.tensor([[0.7 * width, 0.55 * height]]),
            "point_labels": torch.tensor([1]),
        },
        "mask": {"mask_input": mask_logits[None]},
        "point_mask": {
            "point_coords": point,
            "point_labels": torch.tensor([1]),
            "mask_input": mask_logits[None],
        },
    }


def model_prompts(size: int) -> dict[str, dict[str, Any]]:
    """``track_step`` prompts in model coordinates for a ``size`` x ``size`` input."""
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 3 : 5 * size // 6] = 1.0
    return {
        "point": {
            "point_inputs": {
                "point_coords": torch.tensor([[[0.6 * size, 0.45 * size]]]),
                "point_labels": torch.tensor([[1]], dtype=torch.int32),
            }
        },
        "box_point": {
            "point_inputs": {
                "point_coords": torch.tensor(
                    [[[0.3 * size, 0.2 * size], [0.9 * size, 0.9 * size], [0.6 * size, 0.5 * size]]]
                ),
                "point_labels": torch.tensor([[2, 3, 1]], dtype=torch.int32),
            }
        },
        "mask": {"mask_inputs": mask},
    }


def model_input(path: Path, size: int) -> torch.Tensor:
    """The frame resized to ``size`` x ``size`` and ImageNet-normalized, as a 1x3xSxS batch."""
    rgb = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std)[None]


@pytest.fixture(scope="module")
def predictor_results(make_checkpoint, bedroom_dir: Path):
    """Lazily computed (ours, upstream) image predictor outputs per config, cached per module."""
    cache: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def get(config: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if config not in cache:
            rgb = np.asarray(Image.open(bedroom_dir / "00000.jpg").convert("RGB"))
            args = {
                "config": config,
                "checkpoint": str(make_checkpoint(config, obj_score_bias=2.0)),
                "image": torch.from_numpy(rgb.copy()),
                "prompts": predictor_prompts(*rgb.shape[:2]),
            }
            cache[config] = run_both(image_predictor_driver, args)
        return cache[config]

    return get


@pytest.fixture(scope="module")
def model_results(make_checkpoint, bedroom_dir: Path):
    """Lazily computed (ours, upstream) SAM2Base outputs per config, cached per module."""
    cache: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def get(config: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if config not in cache:
            args = {
                "config": config,
                "sizes": MODEL_SIZES,
                "images": {s: model_input(bedroom_dir / "00000.jpg", s) for s in MODEL_SIZES},
                "prompts": {s: model_prompts(s) for s in MODEL_SIZES},
                "checkpoints": {
                    "present": str(make_checkpoint(config, obj_score_bias=2.0)),
                    "absent": str(make_checkpoint(config, obj_score_bias=-2.0)),
                },
                "track_keys": TRACK_KEYS,
            }
            cache[config] = run_both(model_driver, args)
        return cache[config]

    return get


@pytest.mark.parametrize("config", CONFIGS)
def test_image_embedding_matches_upstream(predictor_results, config: str) -> None:
    ours, theirs = predictor_results(config)
    assert max_abs_diff(ours["image_embed"], theirs["image_embed"]) < ATOL


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("prompt", list(predictor_prompts(2, 2)))
@pytest.mark.parametrize("config", CONFIGS)
def test_image_predictor_matches_upstream(
    predictor_results, config: str, prompt: str, multimask: bool
) -> None:
    ours, theirs = (r[(prompt, multimask)] for r in predictor_results(config))
    assert ours["low_res"].shape[0] == (3 if multimask else 1)
    for key in ("low_res", "logits", "ious"):
        diff = max_abs_diff(ours[key], theirs[key])
        assert diff < ATOL, f"{key}: max |diff| {diff:.3g}"
    # Binary masks may only differ where upstream's logit is within float noise of the threshold.
    decisive = theirs["logits"].abs() > ATOL
    assert torch.equal(ours["masks"][decisive], theirs["masks"][decisive])
    assert mask_iou(ours["masks"], theirs["masks"]) >= 0.999


@pytest.mark.parametrize("size", MODEL_SIZES)
@pytest.mark.parametrize("config", CONFIGS)
def test_forward_image_matches_upstream(model_results, config: str, size: int) -> None:
    ours, theirs = (r[(size, "present")] for r in model_results(config))
    diff = max_abs_diff(ours["vision_features"], theirs["vision_features"])
    assert diff < ATOL, f"vision_features: max |diff| {diff:.3g}"
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(ours[key]) == len(theirs[key])
        for level, (a, b) in enumerate(zip(ours[key], theirs[key])):
            diff = max_abs_diff(a, b)
            assert diff < ATOL, f"{key}[{level}]: max |diff| {diff:.3g}"


@pytest.mark.parametrize("step", ["point", "box_point", "mask", "tracked"])
@pytest.mark.parametrize("branch", ["present", "absent"])
@pytest.mark.parametrize("size", MODEL_SIZES)
@pytest.mark.parametrize("config", CONFIGS)
def test_track_step_matches_upstream(model_results, config: str, size: int, branch: str, step: str) -> None:
    ours, theirs = (r[(size, branch)][step] for r in model_results(config))
    appearing = theirs["object_score_logits"] > 0
    if step != "mask":  # a mask prompt is its own output and always marks the object present
        assert bool(appearing.all()) == (branch == "present"), "checkpoint bias did not pick the branch"
    for key in TRACK_KEYS:
        diff = max_abs_diff(ours[key], theirs[key])
        assert diff < ATOL, f"{key}: max |diff| {diff:.3g}"
    assert len(ours["maskmem_pos_enc"]) == len(theirs["maskmem_pos_enc"])
    for a, b in zip(ours["maskmem_pos_enc"], theirs["maskmem_pos_enc"]):
        assert max_abs_diff(a, b) < ATOL
