"""Numerical parity of ``SAM2VideoPredictor`` with upstream sam2==1.1.0 on 8 real frames (CPU).

Scenario: object 1 gets a mask and object 2 a point on frame 0, object 3 a box on frame 4;
``apply_postprocessing=False`` on both sides. Each session below starts from ``init_state``.

Upstream on CPU cannot track an object on a frame where its memory holds only spatial
memories and no object pointer: stored memories are bfloat16, and without an fp32 pointer to
promote the concatenation, the bf16 tokens reach the fp32 ``v_proj`` of memory attention and
``F.linear`` raises "mat1 and mat2 must have the same dtype". That is the case for

* forward propagation from frame 0 reaching object 3 (prompted on frame 4) on frame 0: its only
  conditioning frame lies in the future, whose pointer is excluded in eval;
* reverse propagation from frame 4 on a fresh session (objects 1 and 2 have nothing after
  frame 4 yet, and their frame-0 pointer lies in the reverse-time future).

So the comparison uses the sessions upstream can run in full:

* ``objs12``: objects 1, 2; forward from frame 0, then reverse from frame 4;
* ``objs123_from4``: objects 1, 2, 3; forward from frame 4, then reverse from frame 4;

and separately checks that our predictor does run what upstream cannot:

* ``objs123``: all three objects, forward from frame 0, then reverse from frame 4: masks for
  every object on every frame, all finite, and objects 1 and 2 unchanged by the presence of
  object 3 (objects are tracked independently);
* ``objs12_fresh_reverse``: objects 1, 2; reverse from frame 4 straight after prompting.

A test also pins upstream's failure on these two sessions, so a change there is noticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from upstream_ref import mask_iou, max_abs_diff, run_both

ALL_SESSIONS = ("objs12", "objs123_from4", "objs123", "objs12_fresh_reverse")
UPSTREAM_FAILS = ("objs123", "objs12_fresh_reverse")
# (config, image size) -> sessions run; 512 px is ~4x the cost, so it runs the one session that
# covers all three objects and a full memory bank (reverse pass after a forward pass).
CASES = {
    ("configs/sam2.1/sam2.1_hiera_t.yaml", 256): ALL_SESSIONS,
    ("configs/sam2/sam2_hiera_t.yaml", 256): ALL_SESSIONS,
    ("configs/sam2.1/sam2.1_hiera_t.yaml", 512): ("objs123_from4",),
}
COMPARED = [(case, s) for case, sessions in CASES.items() for s in sessions if s not in UPSTREAM_FAILS]
NOT_COMPARED = [(case, s) for case, sessions in CASES.items() for s in sessions if s in UPSTREAM_FAILS]
OURS_ONLY = [case for case, sessions in CASES.items() if set(UPSTREAM_FAILS) <= set(sessions)]
LOGIT_ATOL = 1e-3
MIN_IOU = 0.999
NUM_FRAMES = 8


def video_driver(args: dict[str, Any]) -> dict[str, Any]:
    """Run the sessions listed per image size in ``args["runs"]`` (runs on both sides).

    Returns ``{(size, session): record}`` where a record holds the masks returned by each prompt
    call, the frames yielded by each propagation, and the error that stopped the session, if any.
    """
    from sam2.build_sam import build_sam2_video_predictor

    out = {}
    for size, names in args["runs"].items():
        predictor = build_sam2_video_predictor(
            args["config"],
            args["checkpoint"],
            device="cpu",
            apply_postprocessing=False,
            hydra_overrides_extra=[f"++model.image_size={size}"],
        )
        for name in names:
            session = args["sessions"][name]
            state = predictor.init_state(args["frames_dir"])
            record = {"prompts": [], "runs": [], "error": None}
            out[(size, name)] = record
            for obj_id, prompt in session["prompts"]:
                if "mask" in prompt:
                    _, obj_ids, masks = predictor.add_new_mask(state, prompt["frame"], obj_id, prompt["mask"])
                else:
                    _, obj_ids, masks = predictor.add_new_points_or_box(
                        state,
                        prompt["frame"],
                        obj_id,
                        points=prompt.get("points"),
                        labels=prompt.get("labels"),
                        box=prompt.get("box"),
                    )
                record["prompts"].append({"obj_ids": list(obj_ids), "masks": masks.clone()})
            for start, reverse in session["propagations"]:
                run = {"start": start, "reverse": reverse, "frames": [], "obj_ids": [], "masks": []}
                record["runs"].append(run)
                try:
                    for frame_idx, obj_ids, masks in predictor.propagate_in_video(
                        state, start_frame_idx=start, reverse=reverse
                    ):
                        run["frames"].append(frame_idx)
                        run["obj_ids"].append(list(obj_ids))
                        run["masks"].append(masks.clone())
                except RuntimeError as err:
                    record["error"] = f"{type(err).__name__}: {err}"
                    break
    return out


def video_sessions(frame: Path) -> dict[str, dict[str, Any]]:
    """The three sessions, with prompts placed relative to the frame size."""
    width, height = Image.open(frame).size
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[height // 4 : 3 * height // 4, width // 10 : width // 3] = True
    obj1 = (1, {"frame": 0, "mask": mask})
    obj2 = (2, {"frame": 0, "points": [[0.62 * width, 0.4 * height]], "labels": [1]})
    obj3 = (3, {"frame": 4, "box": [0.45 * width, 0.3 * height, 0.85 * width, 0.95 * height]})
    return {
        "objs12": {"prompts": [obj1, obj2], "propagations": [(0, False), (4, True)]},
        "objs123_from4": {"prompts": [obj1, obj2, obj3], "propagations": [(4, False), (4, True)]},
        "objs123": {"prompts": [obj1, obj2, obj3], "propagations": [(0, False), (4, True)]},
        "objs12_fresh_reverse": {"prompts": [obj1, obj2], "propagations": [(4, True)]},
    }


@pytest.fixture(scope="module")
def video_results(make_checkpoint, bedroom_dir: Path):
    """Lazily computed (ours, upstream) results per config, all sizes in one upstream run."""
    cache: dict[str, tuple[dict[Any, Any], dict[Any, Any]]] = {}

    def get(config: str, size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        if config not in cache:
            args = {
                "config": config,
                "checkpoint": str(make_checkpoint(config, obj_score_bias=2.0)),
                "runs": {s: list(names) for (c, s), names in CASES.items() if c == config},
                "frames_dir": str(bedroom_dir),
                "sessions": video_sessions(bedroom_dir / "00000.jpg"),
            }
            cache[config] = run_both(video_driver, args)
        ours, theirs = cache[config]
        return {k[1]: v for k, v in ours.items() if k[0] == size}, {
            k[1]: v for k, v in theirs.items() if k[0] == size
        }

    return get


def assert_masks_match(ours: torch.Tensor, theirs: torch.Tensor, where: str) -> None:
    """Logits within ``LOGIT_ATOL`` and per-object binary-mask IoU >= ``MIN_IOU``."""
    diff = max_abs_diff(ours, theirs)
    assert diff < LOGIT_ATOL, f"{where}: max |logit diff| {diff:.3g}"
    for obj in range(theirs.shape[0]):
        iou = mask_iou(ours[obj] > 0, theirs[obj] > 0)
        assert iou >= MIN_IOU, f"{where}, object #{obj}: IoU {iou:.5f}"


def case_id(case: tuple[str, int]) -> str:
    return f"{Path(case[0]).stem}-{case[1]}px"


@pytest.mark.parametrize("case", list(CASES), ids=case_id)
def test_prompt_outputs_match_upstream(video_results, case: tuple[str, int]) -> None:
    ours, theirs = video_results(*case)
    for name in theirs:
        assert len(ours[name]["prompts"]) == len(theirs[name]["prompts"])
        for i, (a, b) in enumerate(zip(ours[name]["prompts"], theirs[name]["prompts"])):
            assert a["obj_ids"] == b["obj_ids"]
            assert_masks_match(a["masks"], b["masks"], f"{name} prompt #{i}")


def param_id(value: Any) -> str:
    return case_id(value) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize(("case", "session"), COMPARED, ids=param_id)
def test_propagation_matches_upstream(video_results, case: tuple[str, int], session: str) -> None:
    ours, theirs = (r[session] for r in video_results(*case))
    assert theirs["error"] is None, f"upstream failed on a session it should run: {theirs['error']}"
    assert ours["error"] is None, ours["error"]
    assert len(ours["runs"]) == len(theirs["runs"]) == 2
    for run_ours, run_theirs in zip(ours["runs"], theirs["runs"]):
        assert run_ours["frames"] == run_theirs["frames"]
        assert run_ours["obj_ids"] == run_theirs["obj_ids"]
        direction = "reverse" if run_theirs["reverse"] else "forward"
        for frame, a, b in zip(run_theirs["frames"], run_ours["masks"], run_theirs["masks"]):
            assert_masks_match(a, b, f"{direction} from {run_theirs['start']}, frame {frame}")
    # Guard against a vacuous comparison: the tracked objects must be visible somewhere.
    last = theirs["runs"][0]["masks"][-1]
    assert bool((last > 0).flatten(1).any(dim=1).all()), "an object vanished: comparison is trivial"


@pytest.mark.parametrize(("case", "session"), NOT_COMPARED, ids=param_id)
def test_upstream_fails_where_documented(video_results, case: tuple[str, int], session: str) -> None:
    """Pins the upstream CPU failure that keeps these sessions out of the comparison."""
    _, theirs = video_results(*case)
    record = theirs[session]
    assert record["error"] is not None and "same dtype" in record["error"], record["error"]
    assert record["runs"][0]["frames"] == [], "upstream failed later than on the first frame"


@pytest.mark.parametrize("case", OURS_ONLY, ids=case_id)
def test_ours_tracks_before_first_prompt(video_results, case: tuple[str, int]) -> None:
    ours, _ = video_results(*case)
    record, reference = ours["objs123"], ours["objs12"]
    assert record["error"] is None, record["error"]
    forward, backward = record["runs"]
    assert forward["frames"] == list(range(NUM_FRAMES))
    assert backward["frames"] == [4, 3, 2, 1, 0]
    for run, ref in zip(record["runs"], reference["runs"]):
        assert run["frames"] == ref["frames"]
        assert all(ids == [1, 2, 3] for ids in run["obj_ids"])
        for frame, masks, ref_masks in zip(run["frames"], run["masks"], ref["masks"]):
            assert masks.shape[0] == 3
            assert bool(torch.isfinite(masks).all()), f"frame {frame}: non-finite logits"
            diff = max_abs_diff(masks[:2], ref_masks)
            assert diff <= 1e-5, f"frame {frame}: objects 1-2 changed by adding object 3 ({diff:.3g})"
    before_prompt = torch.stack([m[2] for f, m in zip(forward["frames"], forward["masks"]) if f < 4])
    assert bool((before_prompt > 0).any()), "object 3 never segmented before its prompt frame"


@pytest.mark.parametrize("case", OURS_ONLY, ids=case_id)
def test_ours_reverse_tracks_from_fresh_state(video_results, case: tuple[str, int]) -> None:
    ours, _ = video_results(*case)
    record = ours["objs12_fresh_reverse"]
    assert record["error"] is None, record["error"]
    (run,) = record["runs"]
    assert run["frames"] == [4, 3, 2, 1, 0]
    for frame, masks in zip(run["frames"], run["masks"]):
        assert masks.shape[0] == 2
        assert bool(torch.isfinite(masks).all()), f"frame {frame}: non-finite logits"
        assert bool((masks > 0).flatten(1).any(dim=1).all()), f"frame {frame}: an object has no mask"
