"""The committed golden runs of the official SAMURAI and DAM4SAM trackers load and match the
inputs of :mod:`tracker_golden` (no tracker runs here: the comparisons of our trackers against
these files live with the trackers' tests)."""

from __future__ import annotations

import numpy as np
import pytest
import tracker_golden as tg

REGENERATE = "inputs changed: regenerate with tools/golden/{name}.py (see its docstring)"


@pytest.fixture(scope="module", params=tg.NAMES)
def golden(request: pytest.FixtureRequest) -> tuple[str, tg.Golden]:
    return request.param, tg.load(request.param)


def test_frames_and_masks_match_the_clip(golden: tuple[str, tg.Golden]) -> None:
    _, g = golden
    assert len(g.frames) == tg.NUM_FRAMES >= 16
    assert [r["frame"] for r in g.frames] == list(range(tg.NUM_FRAMES))
    assert g.masks.shape == (tg.NUM_FRAMES, tg.VIDEO_HEIGHT, tg.VIDEO_WIDTH)
    assert g.masks.dtype == np.bool_
    assert g.masks[0].any(), "the prompted frame has an empty mask"


def test_manifest_names_the_pinned_reference_and_the_inputs(golden: tuple[str, tg.Golden]) -> None:
    name, g = golden
    commit, tree = {
        "samurai": (tg.SAMURAI_COMMIT, tg.SAMURAI_TREE_SHA256),
        "dam4sam": (tg.DAM4SAM_COMMIT, tg.DAM4SAM_TREE_SHA256),
    }[name]
    assert g.manifest["reference"]["commit"] == commit
    assert g.manifest["reference"]["tree_sha256"] == tree
    assert g.manifest["inputs"] == tg.describe_inputs(name), REGENERATE.format(name=name)
    assert g.manifest["generated"]["deterministic_runs"] >= 2


def test_weights_recipe_is_the_recorded_one(golden: tuple[str, tg.Golden]) -> None:
    name, g = golden
    assert g.manifest["state_dict_sha256"] == tg.state_dict_sha256(tg.state_dict(name)), REGENERATE.format(name=name)


def test_golden_folders_stay_small() -> None:
    for name in tg.NAMES:
        size = sum(p.stat().st_size for p in tg.golden_dir(name).iterdir())
        assert size < 300_000, f"{name}: {size} bytes"


def test_samurai_records_are_consistent() -> None:
    g = tg.load("samurai")
    warmup = tg.SAMURAI_STABLE_FRAMES_THRESHOLD
    assert len(g.frames[0]["ious"]) == 1 and g.frames[0]["chosen"] == 0  # box prompt: single mask
    for r in g.frames[1:]:
        assert len(r["ious"]) == 3 and r["chosen"] in (0, 1, 2)
        assert r["motion_changed_choice"] == (r["chosen"] != r["argmax_iou"])
        assert r["kf_mean"] is not None and len(r["kf_mean"]) == 8
        if r["frame"] <= warmup:  # KF initialisation, then warm-up updates: plain best IoU
            assert r["kf_ious"] is None and not r["motion_changed_choice"]
        else:
            assert len(r["kf_ious"]) == 3
            assert r["kf_score"] == pytest.approx(r["kf_ious"][r["chosen"]])
        assert r["best_iou_score"] == pytest.approx(r["ious"][r["chosen"]])
    threshold = tg.SAMURAI_SETTINGS["min_obj_score_logits"]
    absent = [r["frame"] for r in g.frames if r["object_score_logit"] <= threshold]
    assert absent and all(not g.masks[f].any() for f in absent)
    assert len(absent) < tg.NUM_FRAMES - 1
    summary = g.manifest["summary"]
    assert summary["absent_frames"] == absent
    assert summary["motion_changed_choice_frames"] == [r["frame"] for r in g.frames if r["motion_changed_choice"]]
    assert summary["motion_changed_choice_frames"], "the motion term never overrides the best IoU"


def test_dam4sam_records_are_consistent() -> None:
    g = tg.load("dam4sam")
    init = g.extra["init_mask"]
    assert init.shape == (tg.VIDEO_HEIGHT, tg.VIDEO_WIDTH) and init.any()
    # frame 0: the estimated mask, fed with add_new_mask (and back through the low-res logits)
    assert (g.masks[0] & init).sum() / (g.masks[0] | init).sum() > 0.9
    assert g.frames[0]["chosen"] is None and not g.frames[0]["added_to_drm"]
    for r in g.frames[1:]:
        assert len(r["ious"]) == 3 and r["chosen"] == r["m_idx"] == int(np.argmax(r["ious"]))
        assert r["m_iou"] == pytest.approx(r["ious"][r["chosen"]])
    absent = [r["frame"] for r in g.frames[1:] if r["object_score_logit"] <= 0]
    assert absent and all(not g.masks[f].any() for f in absent)
    added = [r["frame"] for r in g.frames if r["added_to_drm"]]
    assert added, "no frame was added to the DRM"
    for f in added:
        r = g.frames[f]
        assert r["m_iou"] > 0.8 and 0.8 <= r["obj_sizes_ratio"] <= 1.2 and min(r["alt_box_ious"]) <= 0.7
    assert np.diff(added).min(initial=6) > 5
    summary = g.manifest["summary"]
    assert summary["absent_frames"] == absent and summary["drm_additions"] == added
