"""Detector re-prompting: the policy over plain numbers, a scripted box source over real frames with
both trackers, and the ultralytics YOLO adapter on an untrained network built from its yaml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from extras import require

from sam2.build_sam import build_sam2_video_predictor
from sam2.utils.frame_sources import ImageFolderSource
from sam2long import build_sam2long_video_predictor
from sam2long.cli import main
from sam2long.detectors import YoloBoxSource
from sam2long.reprompt import (
    Detection,
    Reprompter,
    RepromptPolicy,
    box_iou,
    mask_box,
    propagate_with_reprompts,
)

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
NUM_FRAMES = 8
PROMPT_BOX = (150.0, 100.0, 300.0, 200.0)
CUP = Detection((160.0, 110.0, 310.0, 210.0), 0.9, "cup")


# --- the policy -------------------------------------------------------------------------------------


def test_policy_asks_after_k_absent_frames_and_picks_the_right_box() -> None:
    rep = Reprompter(RepromptPolicy(absent_frames=3, min_score=0.5))
    rep.set_label(7, "cup")
    assert rep.due(7) is None, "never before the object's first prompt"
    rep.prompted(7, 0)
    rep.observe_box(7, PROMPT_BOX)
    for logit in (2.0, -1.0, -0.5):
        rep.observe(7, logit)
        assert rep.due(7) is None
    rep.observe(7, 0.0)  # a logit of 0 counts as absent, as in SAM 2
    assert rep.due(7) == "absent"
    detections = [
        Detection((0.0, 0.0, 40.0, 40.0), 0.99, "cup"),  # the right class, far away
        Detection((150.0, 100.0, 300.0, 200.0), 0.95, "dog"),  # on the object, wrong class
        Detection((170.0, 120.0, 320.0, 220.0), 0.4, "cup"),  # on the object, low score
        CUP,
    ]
    assert rep.choose(7, detections) == CUP
    rep.asked(7)
    assert rep.due(7) is None, "after an unanswered query it waits K frames again"
    strict = Reprompter(RepromptPolicy(absent_frames=1, min_iou=0.9))
    strict.observe_box(1, PROMPT_BOX)
    assert strict.choose(1, [CUP]) is None and strict.choose(1, [Detection(PROMPT_BOX, 0.6)]) is not None


def test_periodic_policy_and_label_learning() -> None:
    rep = Reprompter(RepromptPolicy(absent_frames=None, every=2))
    rep.learn_label(1, PROMPT_BOX, [Detection((0, 0, 10, 10), 0.9, "dog"), CUP])
    rep.prompted(1, 0)
    rep.observe(1, 5.0)
    assert rep.due(1) is None
    rep.observe(1, 5.0)
    assert rep.due(1) == "periodic"
    assert rep.choose(1, [Detection(PROMPT_BOX, 0.99, "dog")]) is None, "learned class: cup"
    with pytest.raises(ValueError, match="absent_frames or every"):
        RepromptPolicy(absent_frames=None, every=None)
    with pytest.raises(ValueError, match="RepromptPolicy.every must be an int >= 1"):
        RepromptPolicy(every=0)


def test_box_helpers() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3.0, 2.0, 9.0, 5.0) and mask_box(np.zeros((4, 4), bool)) is None
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)


# --- with a model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames(first_frames) -> Path:
    return first_frames(NUM_FRAMES)


@pytest.fixture(scope="module", params=["sam2", "sam2long"])
def lost_predictor(request, make_checkpoint):
    """Object-score bias -5: every tracked frame reports the object absent (a lost object); the mask
    prompt on frame 0 is present by construction."""
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=-5.0)
    common = dict(device="cpu", hydra_overrides_extra=OVERRIDES, apply_postprocessing=False)
    if request.param == "sam2":
        return build_sam2_video_predictor(CFG, ckpt, **common)
    return build_sam2long_video_predictor(CFG, ckpt, **common)


class ScriptedBoxes:
    """A box source answering every frame with a cup near the object and a distractor."""

    def __init__(self, answer: bool = True) -> None:
        self.answer, self.calls = answer, []

    def __call__(self, frame: np.ndarray, frame_idx: int) -> list[Detection]:
        assert frame.shape == (270, 480, 3) and frame.dtype == np.uint8
        self.calls.append(frame_idx)
        return [Detection((0.0, 0.0, 50.0, 50.0), 0.97, "dog"), CUP] if self.answer else []


def _session(predictor, frames: Path):
    state = predictor.init_state(str(frames))
    mask = np.zeros((270, 480), dtype=bool)
    mask[100:200, 150:300] = True
    predictor.add_new_mask(state, 0, 1, mask)
    return state


def test_lost_object_is_reprompted_on_the_frame_the_policy_names(lost_predictor, frames: Path) -> None:
    state = _session(lost_predictor, frames)
    boxes = ScriptedBoxes()
    rep = Reprompter(RepromptPolicy(absent_frames=2))
    steps = []
    kw = {"observer": steps.append} if hasattr(lost_predictor, "sam2long") else {}
    out = {
        f: m.clone()
        for f, _, m in propagate_with_reprompts(
            lost_predictor, state, ImageFolderSource(frames), boxes, rep.policy, rep, **kw
        )
    }
    assert sorted(out) == list(range(NUM_FRAMES))
    # prompt on 0; frames 1, 2 absent -> re-prompt on 3; 4, 5 absent -> 6; 7 absent once.
    assert [r.frame_idx for r in rep.log] == [3, 6]
    assert all(
        r.obj_id == 1 and r.box == CUP.box and r.label == "cup" and r.reason == "absent" for r in rep.log
    )
    assert rep.objects[1].label == "cup", "learned from the detection matching the first prompt"
    assert boxes.calls == [0, 3, 6]
    cond = state["output_dict_per_obj"][0]["cond_frame_outputs"]
    assert sorted(cond) == [0, 3, 6], "each re-prompt is a conditioning frame"
    for f in (3, 6):
        low_res = cond[f]["pred_masks"].to(out[f].dtype)
        expected = lost_predictor.video_res_masks(state, low_res)
        assert torch.equal(out[f], expected), f"frame {f} outputs its re-prompted mask"
    if steps:
        kinds = {s.frame_idx: s.kind for s in steps if s.frame_idx is not None}
        assert kinds[3] == kinds[6] == "prompt", "the tree collapses on the re-prompted frames"


def test_a_source_that_never_answers_changes_nothing(lost_predictor, frames: Path) -> None:
    plain = {f: m.clone() for f, _, m in lost_predictor.propagate_in_video(_session(lost_predictor, frames))}
    state = _session(lost_predictor, frames)
    silent = ScriptedBoxes(answer=False)
    rep = Reprompter(RepromptPolicy(absent_frames=2))
    out = {
        f: m.clone()
        for f, _, m in propagate_with_reprompts(
            lost_predictor, state, ImageFolderSource(frames), silent, rep.policy, rep
        )
    }
    assert rep.log == [] and len(silent.calls) >= 2
    assert sorted(out) == sorted(plain)
    assert all(torch.equal(out[f], plain[f]) for f in plain)


# --- the YOLO adapter -------------------------------------------------------------------------------


def test_yolo_adapter_on_an_untrained_network(bedroom_dir: Path) -> None:
    from PIL import Image

    require("ultralytics", "pip install -e '.[yolo]'")
    source = YoloBoxSource("yolov8n.yaml", conf=1e-4, imgsz=256, device="cpu")
    assert Image.open.__module__ == "PIL.Image", "ultralytics' global Image.open patch is undone"
    frame = np.asarray(ImageFolderSource(bedroom_dir).get(0))
    detections = source(frame, 0)
    assert isinstance(detections, list) and detections, "an untrained head still scores some boxes"
    for det in detections:
        x0, y0, x1, y1 = det.box
        assert 0 <= x0 <= x1 <= 480 and 0 <= y0 <= y1 <= 270
        assert 1e-4 <= det.score <= 1.0 and isinstance(det.label, str)
    with pytest.raises(ValueError, match="frame 3: expected an \\(H, W, 3\\) uint8 RGB frame"):
        source(frame[..., 0], 3)
    with pytest.raises(FileNotFoundError, match="YOLO model /nonexistent/best.pt not found"):
        YoloBoxSource("/nonexistent/best.pt")


def test_segment_with_a_detector_logs_reprompts(make_checkpoint, frames: Path, tmp_path: Path) -> None:
    """``sam2long segment --detector``: the run summary lists every re-prompt and the query count."""
    require("ultralytics", "pip install -e '.[yolo]'")
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=-5.0)
    out = tmp_path / "out"
    argv = ["segment", str(frames), "--out", str(out), "--box", "150,100,300,200"]
    argv += ["--config", CFG, "--checkpoint", str(ckpt), "--hydra_overrides", *OVERRIDES, "--device", "cpu"]
    argv += ["--detector", "yolov8n.yaml", "--detector_min_score", "0.0001", "--reprompt_absent", "2"]
    argv += ["--detector_device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["trackers"]["sam2long"]
    assert entry["detector_queries"] >= 1
    for r in entry["reprompts"]:
        assert set(r) == {"frame_idx", "obj_id", "box", "score", "label", "reason"} and r["obj_id"] == 1
    assert [r["frame_idx"] for r in entry["reprompts"]] == [3, 6], "any box of an unknown class qualifies"
