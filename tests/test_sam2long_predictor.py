"""End-to-end tests of SAM2LongVideoPredictor on real frames with seeded random weights (CPU, 256 px).

Ground truths are model-independent: SAM 2's own predictor (P=1 equivalence), an offline back-track
of the full search recorded during the run (streaming exactness), and the same objects tracked one
at a time (batching).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.build_sam import build_sam2_video_predictor
from sam2long import SAM2LongConfig, SAM2LongVideoPredictor, build_sam2long_video_predictor
from sam2long.tree import PathwayTree, is_certain

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def frames(bedroom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first NUM_FRAMES bedroom frames (480x270)."""
    out = tmp_path_factory.mktemp("frames")
    for src in sorted(bedroom_dir.glob("*.jpg"))[:NUM_FRAMES]:
        (out / src.name).write_bytes(src.read_bytes())
    return out


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
    """Records every node the trees create, its mask, and the final best pathways, so the official
    answer (back-track from the best pathway after the last frame) can be rebuilt offline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parent: dict[tuple[int, int], int | None] = {}
        self.frame: dict[tuple[int, int], int] = {}
        self.mask: dict[tuple[int, int], torch.Tensor] = {}
        self.best: dict[int, int] = {}
        self.certain: list[bool] = []
        self.distinct: list[int] = []
        self.trees: dict[int, int] = {}
        self.max_nodes = 0
        rec = self

        orig_new_node = PathwayTree._new_node
        orig_branch = PathwayTree.branch
        orig_finish = PathwayTree.finish
        orig_encode = SAM2LongVideoPredictor._encode_nodes

        def new_node(tree, frame, parent, *args):
            node = orig_new_node(tree, frame, parent, *args)
            rec.parent[(id(tree), node)] = parent
            rec.frame[(id(tree), node)] = frame
            return node

        def branch(tree, frame, iou, obj_logit, uncertainty, eps=1e-5):
            rec.certain.append(is_certain(obj_logit, uncertainty))
            report = orig_branch(tree, frame, iou, obj_logit, uncertainty, eps)
            rec.distinct.append(len(set(tree.pathway_nodes)))
            rec.max_nodes = max(rec.max_nodes, tree.num_stored_nodes)
            return report

        def finish(tree):
            rec.best[id(tree)] = tree.pathway_nodes[tree.best_pathway()]
            return orig_finish(tree)

        def encode(predictor, state, frame_idx, encode_list, low_res, *args):
            orig_encode(predictor, state, frame_idx, encode_list, low_res, *args)
            for track, node, _, _ in encode_list:
                rec.trees[id(track.tree)] = track.obj_idx
                rec.mask[(id(track.tree), node)] = track.nodes[node].pred_masks.clone()

        monkeypatch.setattr(PathwayTree, "_new_node", new_node)
        monkeypatch.setattr(PathwayTree, "branch", branch)
        monkeypatch.setattr(PathwayTree, "finish", finish)
        monkeypatch.setattr(SAM2LongVideoPredictor, "_encode_nodes", encode)

    def best_path_masks(self) -> dict[int, dict[int, torch.Tensor]]:
        """{obj_idx: {frame: low-res logits}} along each object's final best pathway."""
        out: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
        for tree_id, obj_idx in self.trees.items():
            node = self.best[tree_id]
            while node is not None:
                out[obj_idx][self.frame[(tree_id, node)]] = self.mask[(tree_id, node)]
                node = self.parent[(tree_id, node)]
        return out


def _max_abs_obj_logits(ckpt: Path, frames: Path, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    seen: list[float] = []
    orig = PathwayTree.branch

    def branch(tree, frame, iou, obj_logit, uncertainty, eps=1e-5):
        seen.append(float(obj_logit.abs().max()))
        return orig(tree, frame, iou, obj_logit, uncertainty, eps)

    with monkeypatch.context() as m:
        m.setattr(PathwayTree, "branch", branch)
        _run(_sam2long(ckpt), frames, objects=(1, 2))
    return seen


def test_streamed_output_equals_end_of_video_best_path(
    ckpt: Path, frames: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pick δ_conf inside the observed range of max |object logit| so both selection rules occur.
    observed = sorted(set(_max_abs_obj_logits(ckpt, frames, monkeypatch)))
    assert len(observed) >= 2, f"object logits do not vary across frames: {observed}"
    uncertainty = (observed[len(observed) // 2 - 1] + observed[len(observed) // 2]) / 2

    rec = _SearchRecorder(monkeypatch)
    streamed = _run(_sam2long(ckpt, uncertainty=uncertainty), frames, objects=(1, 2))
    assert any(rec.certain) and not all(rec.certain), "both selection rules must occur"
    assert max(rec.distinct) > 1, "pathways never diverged"

    reference = rec.best_path_masks()
    assert sorted(streamed) == list(range(NUM_FRAMES))
    for obj_idx, per_frame in reference.items():
        assert sorted(per_frame) == list(range(1, NUM_FRAMES)), "every tracked frame is on the best path"
        for frame_idx, low_res in per_frame.items():
            expected = torch.nn.functional.interpolate(
                low_res, size=(270, 480), mode="bilinear", align_corners=False
            )
            assert torch.equal(streamed[frame_idx][obj_idx : obj_idx + 1], expected), (obj_idx, frame_idx)
    # Node storage stays bounded by the live pathways plus the retained history.
    assert rec.max_nodes <= 3 * NUM_FRAMES


def _max_emit_lag(predictor, frames: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Largest number of frames processed beyond a frame before it was emitted."""
    state = predictor.init_state(str(frames))
    PROMPTS[1](predictor, state)
    processed = []
    orig = SAM2LongVideoPredictor._tree_step

    def tree_step(self, state, tracks, frame_idx, step, reverse):
        processed.append(frame_idx)
        return orig(self, state, tracks, frame_idx, step, reverse)

    lags = {}
    with monkeypatch.context() as m:
        m.setattr(SAM2LongVideoPredictor, "_tree_step", tree_step)
        for frame_idx, _, _ in predictor.propagate_in_video(state):
            lags[frame_idx] = len(processed) - (frame_idx + 1)
    assert sorted(lags) == list(range(NUM_FRAMES))
    return max(lag for f, lag in lags.items() if f < NUM_FRAMES - 1)


def test_max_lag_bounds_latency(ckpt: Path, frames: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pathways that never coalesce delay every frame to the end of the exact search; max_lag=1 still
    emits each frame at most one frame late."""

    def separate_lineages(tree, frame, iou, obj_logit, uncertainty, eps=1e-5):
        # Pathway p takes candidate p once, then candidate 0 of itself: lineages never merge.
        P = tree.num_pathways
        first = len(set(tree.pathway_nodes)) == 1
        cands = list(range(P)) if first else [0] * P
        scores = [float(tree.scores[p]) + float(torch.log(iou[p, cands[p]] + eps)) for p in range(P)]
        return tree.advance(frame, list(range(P)), cands, scores, iou, obj_logit)

    monkeypatch.setattr(PathwayTree, "branch", separate_lineages)
    exact = _max_emit_lag(_sam2long(ckpt), frames, monkeypatch)
    bounded = _max_emit_lag(_sam2long(ckpt, max_lag=1), frames, monkeypatch)
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


def test_builder_config_and_presets(ckpt: Path) -> None:
    paper = _sam2long(ckpt, config="paper")
    assert paper.sam2long == SAM2LongConfig.from_preset("paper")
    assert paper.sam2long.iou_threshold == 0.3
    custom = SAM2LongConfig(num_pathways=2, memory_modulation=None)
    assert _sam2long(ckpt, config=custom).sam2long is custom
    with pytest.raises(ValueError, match="either"):
        _sam2long(ckpt, config="paper", num_pathways=5)
    with pytest.raises(ValueError):
        _sam2long(ckpt, num_pathways=0)
