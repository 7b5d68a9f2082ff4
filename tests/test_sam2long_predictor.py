"""End-to-end tests of SAM2LongVideoPredictor on real frames with seeded random weights (CPU, 256 px).

Ground truths are model-independent: SAM 2's own predictor (P=1 equivalence), an offline back-track
of the full search recorded through the predictor's public pathway records (streaming exactness), and
the same objects tracked one at a time (batching).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.build_sam import build_sam2_video_predictor
from sam2long import SAM2LongVideoPredictor, build_sam2long_video_predictor
from sam2long.predictor import PathwayStep
from sam2long.tree import PathwayTree

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def frames(first_frames) -> Path:
    return first_frames(NUM_FRAMES)


@pytest.fixture(scope="module")
def ckpt(make_checkpoint) -> Path:
    # A small positive object-score bias: objects present, |logit| around the uncertainty scale.
    return make_checkpoint(CFG, seed=0, obj_score_bias=1.0)


def _sam2(ckpt: Path):
    return build_sam2_video_predictor(
        CFG, ckpt, device="cpu", hydra_overrides_extra=OVERRIDES, apply_postprocessing=False
    )


def _sam2long(ckpt: Path, **kw) -> SAM2LongVideoPredictor:
    kw.setdefault("hydra_overrides_extra", OVERRIDES)
    return build_sam2long_video_predictor(CFG, ckpt, device="cpu", apply_postprocessing=False, **kw)


def _greedy(ckpt: Path) -> SAM2LongVideoPredictor:
    return _sam2long(ckpt, num_pathways=1, memory_modulation=None, memory_selection=False)


def _box_mask() -> np.ndarray:
    mask = np.zeros((270, 480), dtype=bool)
    mask[100:200, 150:300] = True
    return mask


PROMPTS = {
    1: lambda p, s: p.add_new_mask(s, 0, 1, _box_mask()),
    2: lambda p, s: p.add_new_points_or_box(s, 0, 2, points=[[350, 120]], labels=[1]),
    3: lambda p, s: p.add_new_points_or_box(s, 3, 3, box=[20, 30, 200, 250]),  # appears later
}


def _run(predictor, frames: Path, objects=(1, 2, 3), **propagate_kw) -> dict[int, torch.Tensor]:
    state = predictor.init_state(str(frames))
    for obj in objects:
        PROMPTS[obj](predictor, state)
    out = {}
    for frame_idx, obj_ids, masks in predictor.propagate_in_video(state, **propagate_kw):
        assert list(obj_ids) == list(objects)
        out[frame_idx] = masks.clone()
    return out


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0, b > 0
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


# --- P = 1 reproduces SAM 2 ------------------------------------------------------------------------


def test_single_pathway_equals_sam2_exactly(ckpt: Path, frames: Path) -> None:
    """P=1 with SAM 2's memory layout and no modulation is SAM 2, bit for bit, for one object."""
    for kw in ({}, {"start_frame_idx": NUM_FRAMES - 1, "reverse": True}):
        ref = _run(_sam2(ckpt), frames, objects=(2,), **kw)
        ours = _run(_greedy(ckpt), frames, objects=(2,), **kw)
        assert sorted(ours) == sorted(ref) and len(ref) == NUM_FRAMES
        for f in ref:
            assert torch.equal(ours[f], ref[f]), f"frame {f} differs ({kw})"
            assert (ref[f] > 0).any(), "test needs non-empty masks"


def test_single_pathway_equals_sam2_for_batched_objects(ckpt: Path, frames: Path) -> None:
    """With several objects batched (one prompted on a later frame) P=1 equals SAM 2 up to the float
    re-association that batching implies (same tolerance as our upstream parity tests)."""
    ref = _run(_sam2(ckpt), frames)
    ours = _run(_greedy(ckpt), frames)
    assert sorted(ours) == sorted(ref) == list(range(NUM_FRAMES))
    for f in ref:
        assert (ours[f] - ref[f]).abs().max().item() < 1e-3, f
        for k in range(3):
            assert _iou(ours[f][k], ref[f][k]) >= 0.999, (f, k)


# --- streaming equals the end-of-video best path ------------------------------------------------------


class _SearchRecorder:
    """Collects the predictor's public pathway records: every node the trees create (with parent, frame
    and mask) and each object's final pathways, so the official answer (back-track from the best pathway
    after the last frame) can be rebuilt offline."""

    def __init__(self) -> None:
        self.steps: list[PathwayStep] = []

    def __call__(self, record: PathwayStep) -> None:
        self.steps.append(record)

    def branches(self) -> list[PathwayStep]:
        return [r for r in self.steps if r.kind == "branch"]

    def best_path_masks(self, obj_ids) -> dict[int, dict[int, torch.Tensor]]:
        """{obj_idx: {frame: low-res logits}} along each object's final best pathway."""
        out: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
        for obj_idx, obj_id in enumerate(obj_ids):
            records = [r for r in self.steps if r.obj_id == obj_id]
            nodes = {c.node: (r.frame_idx, c) for r in records for c in r.created}
            end = next(r for r in records if r.kind == "end")
            node = end.pathway_nodes[end.best_pathway]
            while node is not None:
                frame_idx, created = nodes[node]
                out[obj_idx][frame_idx] = created.pred_masks
                node = created.parent
        return out


def _max_abs_obj_logits(ckpt: Path, frames: Path) -> list[float]:
    rec = _SearchRecorder()
    _run(_sam2long(ckpt), frames, objects=(1, 2), observer=rec)
    return [max(abs(v) for v in r.obj_logits) for r in rec.branches()]


def test_streamed_output_equals_end_of_video_best_path(ckpt: Path, frames: Path) -> None:
    # Pick δ_conf inside the observed range of max |object logit| so both selection rules occur.
    observed = sorted(set(_max_abs_obj_logits(ckpt, frames)))
    assert len(observed) >= 2, f"object logits do not vary across frames: {observed}"
    uncertainty = (observed[len(observed) // 2 - 1] + observed[len(observed) // 2]) / 2

    rec = _SearchRecorder()
    streamed = _run(_sam2long(ckpt, uncertainty=uncertainty), frames, objects=(1, 2), observer=rec)
    certain = [r.certain for r in rec.branches()]
    assert any(certain) and not all(certain), "both selection rules must occur"
    assert max(len(set(r.pathway_nodes)) for r in rec.branches()) > 1, "pathways never diverged"

    reference = rec.best_path_masks((1, 2))
    assert sorted(streamed) == list(range(NUM_FRAMES))
    for obj_idx, per_frame in reference.items():
        assert sorted(per_frame) == list(range(1, NUM_FRAMES)), "every tracked frame is on the best path"
        for frame_idx, low_res in per_frame.items():
            expected = torch.nn.functional.interpolate(
                low_res, size=(270, 480), mode="bilinear", align_corners=False
            )
            assert torch.equal(streamed[frame_idx][obj_idx : obj_idx + 1], expected), (obj_idx, frame_idx)
    # Every frame is committed exactly once per object, and node storage stays bounded.
    for obj_id in (1, 2):
        committed = [f for r in rec.steps if r.obj_id == obj_id for f in r.committed_frames]
        assert sorted(committed) == list(range(1, NUM_FRAMES))
    assert max(r.stored_nodes for r in rec.steps) <= 3 * NUM_FRAMES


def test_pathway_records_describe_every_frame(ckpt: Path, frames: Path) -> None:
    """The public record: one entry per object and frame (plus "end"), scores per pathway, in order."""
    rec = _SearchRecorder()
    _run(_sam2long(ckpt), frames, objects=(1, 3), observer=rec)
    for obj_id, first_prompt in ((1, 0), (3, 3)):
        records = [r for r in rec.steps if r.obj_id == obj_id]
        assert [r.frame_idx for r in records] == list(range(NUM_FRAMES)) + [None]
        kinds = [r.kind for r in records]
        assert kinds[first_prompt] == "prompt" and kinds[-1] == "end"
        assert kinds[first_prompt + 1] == "root"
        assert all(k == "branch" for k in kinds[first_prompt + 2 : -1])
        assert all(k in ("root", "greedy") for k in kinds[:first_prompt])
        for r in records:
            if r.kind in ("branch", "end"):
                assert len(r.scores) == len(r.ious) == len(r.obj_logits) == 3
                assert r.scores[r.best_pathway] == max(r.scores)
            if r.kind == "branch":
                assert r.certain is not None and all(-1e9 < s <= 0 for s in r.scores)


def _max_emit_lag(predictor, frames: Path) -> int:
    """Largest number of frames processed beyond a frame before it was emitted."""
    state = predictor.init_state(str(frames))
    PROMPTS[1](predictor, state)
    processed: list[int] = []
    lags = {}
    for frame_idx, _, _ in predictor.propagate_in_video(
        state, observer=lambda r: processed.append(r.frame_idx)
    ):
        lags[frame_idx] = len([f for f in processed if f is not None]) - (frame_idx + 1)
    assert sorted(lags) == list(range(NUM_FRAMES))
    return max(lag for f, lag in lags.items() if f < NUM_FRAMES - 1)


def test_max_lag_bounds_latency(ckpt: Path, frames: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pathways that never coalesce delay every frame to the end of the exact search; max_lag=1 still
    emits each frame at most one frame late."""

    def separate_lineages(tree, step, iou, obj_logit, uncertainty, eps=1e-5, *_):
        # Pathway p takes candidate p once, then candidate 0 of itself: lineages never merge.
        P = tree.num_pathways
        first = len(set(tree.pathway_nodes)) == 1
        cands = list(range(P)) if first else [0] * P
        scores = [float(tree.scores[p]) + float(torch.log(iou[p, cands[p]] + eps)) for p in range(P)]
        return tree.advance(step, list(range(P)), cands, scores, iou, obj_logit)

    monkeypatch.setattr(PathwayTree, "branch", separate_lineages)
    exact = _max_emit_lag(_sam2long(ckpt), frames)
    bounded = _max_emit_lag(_sam2long(ckpt, max_lag=1), frames)
    assert exact == NUM_FRAMES - 3, "the exact search decides only at the end"
    assert bounded <= 1


# --- batching -----------------------------------------------------------------------------------


def test_objects_tracked_together_equal_objects_tracked_alone(ckpt: Path, frames: Path) -> None:
    together = _run(_sam2long(ckpt), frames, objects=(1, 2, 3), start_frame_idx=0)
    for k, obj in enumerate((1, 2, 3)):
        alone = _run(_sam2long(ckpt), frames, objects=(obj,), start_frame_idx=0)
        assert sorted(alone) == sorted(together) == list(range(NUM_FRAMES))
        for f in together:
            assert _iou(together[f][k], alone[f][0]) >= 0.999, (obj, f)
            assert (together[f][k] - alone[f][0]).abs().max().item() < 1e-3, (obj, f)


# --- prompts, sizes, API ------------------------------------------------------------------------------


def test_conditioning_frame_collapses_pathways_and_later_prompts(ckpt: Path, frames: Path) -> None:
    predictor = _sam2long(
        ckpt,
        uncertainty=100.0,
        hydra_overrides_extra=OVERRIDES + ["++model.add_all_frames_to_correct_as_cond=true"],
    )
    state = predictor.init_state(str(frames))
    PROMPTS[1](predictor, state)
    _, _, prompted = predictor.add_new_points_or_box(state, 3, 1, points=[[240, 150]], labels=[1])
    out = {f: m.clone() for f, _, m in predictor.propagate_in_video(state)}
    assert sorted(out) == list(range(NUM_FRAMES))
    assert torch.equal(out[3], prompted), "a conditioning frame outputs its prompted mask"
    # Best-path outputs stay in the session: a correction after propagation reads them as memory
    # and becomes a conditioning frame for the next propagation.
    assert set(state["output_dict_per_obj"][0]["non_cond_frame_outputs"]) == {1, 2, 4, 5}
    _, _, corrected = predictor.add_new_points_or_box(state, 5, 1, points=[[100, 100]], labels=[1])
    again = {f: m.clone() for f, _, m in predictor.propagate_in_video(state, start_frame_idx=0)}
    assert torch.equal(again[5], corrected)


def test_any_image_size_and_store_outputs_off(make_checkpoint, frames: Path) -> None:
    ckpt = make_checkpoint(CFG, seed=1, obj_score_bias=1.0)
    predictor = build_sam2long_video_predictor(
        CFG, ckpt, device="cpu", hydra_overrides_extra=["++model.image_size=320"], store_outputs=False
    )
    state = predictor.init_state(str(frames))
    PROMPTS[1](predictor, state)
    out = {f: m for f, _, m in predictor.propagate_in_video(state, max_frame_num_to_track=3)}
    assert sorted(out) == [0, 1, 2, 3]
    assert all(m.shape == (1, 1, 270, 480) for m in out.values())
    assert not state["output_dict_per_obj"][0]["non_cond_frame_outputs"]


# --- SAM 2 options under SAM2Long ------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, option",
    [
        ("++model.memory_temporal_stride_for_eval=2", "memory_temporal_stride_for_eval"),
        ("++model.non_overlap_masks_for_mem_enc=true", "non_overlap_masks_for_mem_enc"),
        ("++model.num_maskmem=1", "num_maskmem"),
    ],
)
def test_options_the_tree_cannot_honour_are_refused_at_build_time(override: str, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        build_sam2long_video_predictor(CFG, None, device="cpu", hydra_overrides_extra=[*OVERRIDES, override])


def test_clear_non_cond_mem_around_input_is_honoured(ckpt: Path, frames: Path) -> None:
    """With SAM 2's layout and P=1 the option gives exactly SAM 2's result, and it changes the result."""
    option = ["++model.clear_non_cond_mem_around_input=true"]

    def run(predictor):
        state = predictor.init_state(str(frames))
        PROMPTS[2](predictor, state)
        predictor.add_new_points_or_box(state, 3, 2, points=[[300, 150]], labels=[1])
        return {f: m.clone() for f, _, m in predictor.propagate_in_video(state)}

    sam2 = build_sam2_video_predictor(
        CFG, ckpt, device="cpu", hydra_overrides_extra=OVERRIDES + option, apply_postprocessing=False
    )
    ref = run(sam2)
    greedy = _sam2long(
        ckpt,
        num_pathways=1,
        memory_modulation=None,
        memory_selection=False,
        hydra_overrides_extra=OVERRIDES + option,
    )
    ours = run(greedy)
    without = run(_greedy(ckpt))
    assert sorted(ours) == sorted(ref) == list(range(NUM_FRAMES))
    for f in ref:
        assert torch.equal(ours[f], ref[f]), f
    assert any(not torch.equal(ours[f], without[f]) for f in range(4, NUM_FRAMES)), "the option had no effect"


def test_non_overlap_applies_across_objects_of_the_output_only(ckpt: Path, frames: Path) -> None:
    """``non_overlap_masks`` resolves overlaps between the objects' final masks; it never changes what
    the pathways track (memories are encoded per pathway, unconstrained)."""
    from sam2.modeling.sam2_utils import apply_non_overlapping_constraints

    free = _run(_sam2long(ckpt), frames, objects=(1, 2), start_frame_idx=0)
    constrained = _run(
        _sam2long(ckpt, hydra_overrides_extra=OVERRIDES + ["++model.non_overlap_masks=true"]),
        frames,
        objects=(1, 2),
        start_frame_idx=0,
    )
    overlapped = False
    for f in free:
        both = (free[f][0] > 0) & (free[f][1] > 0)
        overlapped |= bool(both.any())
        assert torch.equal(constrained[f], apply_non_overlapping_constraints(free[f])), f
        assert not ((constrained[f][0] > 0) & (constrained[f][1] > 0)).any()
    assert overlapped, "test needs overlapping objects"
