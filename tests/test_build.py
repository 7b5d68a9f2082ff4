"""Tests of model building (hydra configs, checkpoint loading) and of SAM2Base tracking hooks.

Everything runs on CPU with the tiny Hiera at 256 px; no upstream code is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf

from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, build_sam2, build_sam2_hf, build_sam2_video_predictor
from sam2.modeling.sam2_base import SAM2Base

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL_OVERRIDES = ["++model.image_size=256"]

# config name -> (Hiera embed_dim, is SAM 2.1)
CONFIGS = {
    "configs/sam2/sam2_hiera_t.yaml": (96, False),
    "configs/sam2/sam2_hiera_s.yaml": (96, False),
    "configs/sam2/sam2_hiera_b+.yaml": (112, False),
    "configs/sam2/sam2_hiera_l.yaml": (144, False),
    "configs/sam2.1/sam2.1_hiera_t.yaml": (96, True),
    "configs/sam2.1/sam2.1_hiera_s.yaml": (96, True),
    "configs/sam2.1/sam2.1_hiera_b+.yaml": (112, True),
    "configs/sam2.1/sam2.1_hiera_l.yaml": (144, True),
}
LEGACY = {
    "sam2_hiera_t.yaml": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s.yaml": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+.yaml": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l.yaml": "configs/sam2/sam2_hiera_l.yaml",
}


# --- config resolution ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_resolves(name: str) -> None:
    cfg = compose(config_name=name)
    embed_dim, is_v21 = CONFIGS[name]
    assert cfg.model._target_ == "sam2.modeling.sam2_base.SAM2Base"
    assert cfg.model.image_encoder.trunk.embed_dim == embed_dim
    assert cfg.model.image_size == 1024
    # SAM 2.1 added the spatial no-object embedding and signed, projected pointer encodings.
    assert bool(cfg.model.get("no_obj_embed_spatial", False)) is is_v21
    assert bool(cfg.model.get("proj_tpos_enc_in_obj_ptrs", False)) is is_v21


@pytest.mark.parametrize("legacy", sorted(LEGACY))
def test_legacy_config_names_match_new_ones(legacy: str) -> None:
    old = OmegaConf.to_container(compose(config_name=legacy), resolve=True)
    new = OmegaConf.to_container(compose(config_name=LEGACY[legacy]), resolve=True)
    assert old == new


def test_hf_table_points_at_existing_configs() -> None:
    assert len(HF_MODEL_ID_TO_FILENAMES) == 8
    for config_name, ckpt_name in HF_MODEL_ID_TO_FILENAMES.values():
        assert config_name in CONFIGS
        assert ckpt_name.endswith(".pt")


def test_overrides_and_postprocessing_reach_the_model() -> None:
    model = build_sam2(TINY, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    assert isinstance(model, SAM2Base) and not model.training
    assert model.image_size == 256 and model.sam_image_embedding_size == 16
    assert model.sam_mask_decoder.dynamic_multimask_via_stability is True
    plain = build_sam2(
        TINY, device="cpu", mode="train", hydra_overrides_extra=SMALL_OVERRIDES, apply_postprocessing=False
    )
    assert plain.training
    assert plain.sam_mask_decoder.dynamic_multimask_via_stability is False


def test_hf_builder_without_huggingface_hub_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ImportError, match="huggingface_hub"):
        build_sam2_hf("facebook/sam2.1-hiera-tiny")


# --- checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(make_checkpoint) -> Path:
    return make_checkpoint(TINY, seed=3, obj_score_bias=2.0)


def test_checkpoint_round_trip_gives_identical_outputs(tiny_ckpt: Path) -> None:
    state_dict = torch.load(tiny_ckpt, weights_only=True)["model"]
    model = build_sam2(TINY, tiny_ckpt, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    loaded = model.state_dict()
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)

    reference = build_sam2(TINY, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    reference.load_state_dict(state_dict)
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model.forward_image(image), reference.forward_image(image)
    for a, b in zip(
        ours["backbone_fpn"] + ours["vision_pos_enc"], ref["backbone_fpn"] + ref["vision_pos_enc"]
    ):
        assert torch.equal(a, b)
    # And the weights really changed the computation compared with a fresh random init.
    fresh = build_sam2(TINY, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    with torch.no_grad():
        other = fresh.forward_image(image)["backbone_fpn"][-1]
    assert not torch.allclose(other, ours["backbone_fpn"][-1])


def _write_modified(src: Path, dst: Path, edit) -> Path:
    state_dict = dict(torch.load(src, weights_only=True)["model"])
    edit(state_dict)
    torch.save({"model": state_dict}, dst)
    return dst


def test_missing_key_is_named(tiny_ckpt: Path, tmp_path: Path) -> None:
    removed = ["no_mem_embed", "sam_mask_decoder.iou_token.weight"]
    path = _write_modified(tiny_ckpt, tmp_path / "missing.pt", lambda sd: [sd.pop(k) for k in removed])
    with pytest.raises(RuntimeError) as err:
        build_sam2(TINY, path, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    message = str(err.value)
    assert "missing.pt" in message and "missing keys (2)" in message
    for key in removed:
        assert key in message


def test_renamed_key_is_reported_both_ways(tiny_ckpt: Path, tmp_path: Path) -> None:
    old, new = "maskmem_tpos_enc", "maskmem_tpos_encoding"

    def rename(sd: dict) -> None:
        sd[new] = sd.pop(old)

    path = _write_modified(tiny_ckpt, tmp_path / "renamed.pt", rename)
    with pytest.raises(RuntimeError) as err:
        build_sam2(TINY, path, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    message = str(err.value)
    assert "renamed.pt" in message
    assert f"missing keys (1):\n    {old}" in message
    assert f"unexpected keys (1):\n    {new}" in message


def test_shape_mismatch_and_bad_format_are_reported(tiny_ckpt: Path, tmp_path: Path) -> None:
    def shrink(sd: dict) -> None:
        sd["no_obj_ptr"] = sd["no_obj_ptr"][:, :8]

    path = _write_modified(tiny_ckpt, tmp_path / "shape.pt", shrink)
    with pytest.raises(RuntimeError, match=r"no_obj_ptr: checkpoint \(1, 8\) vs model \(1, 256\)"):
        build_sam2(TINY, path, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(tiny_ckpt, weights_only=True)["model"], bare)
    with pytest.raises(RuntimeError, match="no 'model' entry"):
        build_sam2(TINY, bare, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)


# --- tracking through SAM2Base --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker(tiny_ckpt: Path) -> tuple[SAM2Base, list]:
    """The tiny model plus prepared features of 4 random frames, batched for 2 objects."""
    model = build_sam2(TINY, tiny_ckpt, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    gen = torch.Generator().manual_seed(1)
    frames = []
    with torch.no_grad():
        for _ in range(4):
            out = model.forward_image(torch.randn(1, 3, 256, 256, generator=gen))
            expanded = {
                k: [x.expand(2, -1, -1, -1) for x in out[k]] for k in ("backbone_fpn", "vision_pos_enc")
            }
            frames.append(model._prepare_backbone_features(expanded)[1:])
    return model, frames


CLICKS = {
    "point_coords": torch.tensor([[[60.0, 70.0]], [[200.0, 150.0]]]),
    "point_labels": torch.tensor([[1], [1]], dtype=torch.int32),
}


def _track(model: SAM2Base, frames: list, memory_dtype: torch.dtype, upto: int = 4) -> dict:
    """Condition on clicks at frame 0, then track; memories are stored in ``memory_dtype``."""
    output_dict: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    results = {}
    with torch.no_grad():
        for t in range(upto):
            out = model.track_step(t, t == 0, *frames[t], CLICKS if t == 0 else None, None, output_dict, 4)
            out["maskmem_features"] = out["maskmem_features"].to(memory_dtype)
            output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
            results[t] = out
    return results


def test_track_step_shapes_and_bfloat16_memories(tracker) -> None:
    model, frames = tracker
    fp32 = _track(model, frames, torch.float32)
    bf16 = _track(model, frames, torch.bfloat16)
    first = fp32[0]
    assert first["pred_masks"].shape == (2, 1, 64, 64)
    assert first["pred_masks_high_res"].shape == (2, 1, 256, 256)
    assert first["obj_ptr"].shape == (2, 256)
    assert first["object_score_logits"].shape == (2, 1)
    assert first["maskmem_features"].shape == (2, 64, 16, 16)
    assert bool((first["object_score_logits"] > 0).all())  # masks are real logits, not NO_OBJ_SCORE
    # bfloat16 memories are read back at the features' precision: close to, not equal to fp32.
    for t in (1, 2, 3):
        a, b = fp32[t]["pred_masks"], bf16[t]["pred_masks"]
        assert b.dtype == torch.float32
        assert torch.allclose(a, b, atol=1e-2)
    assert not torch.equal(fp32[3]["pred_masks"], bf16[3]["pred_masks"])


def test_memory_selection_hook_controls_the_bank(tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subclass-style override of ``_select_memory_entries`` decides what is attended to."""
    model, frames = tracker
    history = _track(model, frames, torch.float32, upto=3)
    full_bank = {
        "cond_frame_outputs": {0: history[0]},
        "non_cond_frame_outputs": {1: history[1], 2: history[2]},
    }
    cond_bank = {"cond_frame_outputs": {0: history[0]}, "non_cond_frame_outputs": {}}

    default_select = model._select_memory_entries
    entries, pointers = default_select(3, full_bank, 4)
    assert [(t, out is not None) for t, out in entries] == [(0, True)] + [(t, t >= 5) for t in range(1, 7)]
    assert [d for d, _ in pointers] == [3, 1, 2]  # cond frame (signed distance) then recent frames

    with torch.no_grad():
        full = model.track_step(3, False, *frames[3], None, None, full_bank, 4)
        cond_only = model.track_step(3, False, *frames[3], None, None, cond_bank, 4)

        def ignore_recent(frame_idx, output_dict, num_frames, track_in_reverse=False):
            bank = {"cond_frame_outputs": output_dict["cond_frame_outputs"], "non_cond_frame_outputs": {}}
            return default_select(frame_idx, bank, num_frames, track_in_reverse)

        monkeypatch.setattr(model, "_select_memory_entries", ignore_recent)
        hooked = model.track_step(3, False, *frames[3], None, None, full_bank, 4)
    assert torch.equal(hooked["pred_masks"], cond_only["pred_masks"])
    assert torch.equal(hooked["obj_ptr"], cond_only["obj_ptr"])
    assert not torch.allclose(hooked["pred_masks"], full["pred_masks"])


def test_video_predictor_builder_applies_video_postprocessing() -> None:
    from sam2.sam2_video_predictor import SAM2VideoPredictor, SAM2VideoPredictorVOS

    video = build_sam2_video_predictor(TINY, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES)
    assert type(video) is SAM2VideoPredictor and not video.training
    assert video.fill_hole_area == 8 and video.binarize_mask_from_pts_for_mem_enc is True
    assert video.sam_mask_decoder.dynamic_multimask_via_stability is True
    plain = build_sam2_video_predictor(
        TINY, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES, apply_postprocessing=False
    )
    assert plain.fill_hole_area == 0 and plain.binarize_mask_from_pts_for_mem_enc is False
    vos = build_sam2_video_predictor(
        TINY, device="cpu", hydra_overrides_extra=SMALL_OVERRIDES, vos_optimized=True
    )
    assert type(vos) is SAM2VideoPredictorVOS
    assert "forward" not in vos.image_encoder.__dict__  # no compilation for a CPU model
