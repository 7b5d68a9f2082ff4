"""The tracker interface: the guide's example tracker runs and is exact, SAM 2 reports its decisions, and
the seams it replaced stay closed (no session keys by string, no protected sam2 names, no type branches)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from tracker_example import PresentFrames, PresentFramesTracker

from sam2.build_sam import build_sam2_video_predictor
from sam2.session import _UPSTREAM_KEYS
from sam2.tracker import TrackStep

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
COMMON = dict(device="cpu", hydra_overrides_extra=["++model.image_size=256"], apply_postprocessing=False)
NUM_FRAMES = 6
ROOT = Path(__file__).resolve().parents[1]


def _track(predictor, frames: Path, observer=None) -> dict[int, torch.Tensor]:
    state = predictor.init_state(str(frames))
    predictor.add_new_points_or_box(state, 0, 1, box=[150, 100, 300, 200])
    return {f: m.clone() for f, _, m in predictor.propagate_in_video(state, observer=observer)}


class _Counting(PresentFramesTracker):
    """The example, noting how many spatial memories each frame's row gets."""

    def __init__(self) -> None:
        self.spatial: list[int] = []

    def track_object(self, run, obj_idx):
        outer = self

        class Counted(PresentFrames):
            def memories(self, step):
                items = super().memories(step)
                outer.spatial.append(len(items[0].spatial))
                return items

        return Counted(run, obj_idx)


def test_example_tracker_equals_sam2_when_the_object_is_always_present(make_checkpoint, first_frames) -> None:
    """Remembering only present frames is SAM 2's rule when every frame is present: bit-equal outputs."""
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=20.0)
    frames = first_frames(NUM_FRAMES)
    records: list[TrackStep] = []
    sam2 = _track(build_sam2_video_predictor(CFG, ckpt, **COMMON), frames, records.append)
    assert all(logit > 0 for r in records if r.kind == "greedy" for logit in r.obj_logits), "premise"
    tracker = _Counting()
    example = _track(build_sam2_video_predictor(CFG, ckpt, tracker=tracker, **COMMON), frames)
    assert sorted(example) == sorted(sam2) == list(range(NUM_FRAMES))
    for f in range(NUM_FRAMES):
        assert torch.equal(example[f], sam2[f]), f
    assert tracker.spatial == [1, 2, 3, 4, 5], "conditioning frame + every tracked frame so far"


def test_example_tracker_forgets_frames_where_the_object_is_absent(make_checkpoint, first_frames) -> None:
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=-20.0)
    tracker = _Counting()
    _track(build_sam2_video_predictor(CFG, ckpt, tracker=tracker, **COMMON), first_frames(NUM_FRAMES))
    assert tracker.spatial == [1] * (NUM_FRAMES - 1), "only the conditioning frame is remembered"


def test_sam2_reports_its_choice_to_the_observer(make_checkpoint, first_frames) -> None:
    """SAM 2 is a tracker like any other: one record per object and frame, with the chosen candidate's
    mask, IoU and object logit (what re-prompting and plots read)."""
    predictor = build_sam2_video_predictor(CFG, make_checkpoint(CFG, seed=0, obj_score_bias=1.0), **COMMON)
    state = predictor.init_state(str(first_frames(NUM_FRAMES)))
    predictor.add_new_points_or_box(state, 0, 1, box=[150, 100, 300, 200])
    records: list[TrackStep] = []
    outputs = {f: m.clone() for f, _, m in predictor.propagate_in_video(state, observer=records.append)}
    assert [(r.frame_idx, r.kind) for r in records] == [(0, "prompt")] + [
        (f, "greedy") for f in range(1, NUM_FRAMES)
    ]
    for record in records[1:]:
        (created,) = record.created
        assert record.committed_frames == (record.frame_idx,) and record.best_pathway == 0
        assert record.ious == (created.iou,) and record.obj_logits == (created.obj_logit,)
        assert 0 <= created.candidate < 3
        assert torch.equal(predictor.video_res_masks(state, created.pred_masks), outputs[record.frame_idx])


def test_the_guide_shows_the_tested_example() -> None:
    guide = (ROOT / "docs" / "architecture.md").read_text()
    example = (ROOT / "tests" / "tracker_example.py").read_text()
    body = example[example.index("from __future__") :]
    assert f"```python\n{body}```" in guide, (
        "docs/architecture.md must embed tests/tracker_example.py verbatim"
    )


# --------------------------------------------------------------------------- seams


def _modules(package: str) -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted((ROOT / package).rglob("*.py"))]


def _protected_sam2_names() -> set[str]:
    """Names of ``_protected`` methods and functions defined anywhere in the sam2 package."""
    names = set()
    for _, tree in _modules("sam2"):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                if not node.name.startswith("__"):
                    names.add(node.name)
    return names


def test_sam2long_reads_no_session_key_by_string() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} [{node.slice.value!r}]"
        for path, tree in _modules("sam2long")
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and node.slice.value in _UPSTREAM_KEYS
        and isinstance(node.value, ast.Name)
        and node.value.id in ("state", "session", "inference_state")
    ]
    assert not found, found


def test_sam2long_names_no_protected_member_of_sam2() -> None:
    protected = _protected_sam2_names()
    found = []
    for path, tree in _modules("sam2long"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sam2."):
                found += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr in protected:
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not found, found


@pytest.mark.parametrize("package", ["sam2", "sam2long"])
def test_no_type_branch_on_predictors_or_trackers(package: str) -> None:
    found = []
    for path, tree in _modules(package):
        if path.name.startswith("build"):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance"
            ):
                kinds = ast.unparse(node.args[1])
                if "Predictor" in kinds or "Tracker" in kinds:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} isinstance(..., {kinds})")
    assert not found, found
