"""Tests of SAM2Long memory selection / modulation (sam2long.memory_policy) and its config (sam2long.config)."""

import random

import pytest
import torch

from sam2long.config import SAM2LongConfig, available_presets, preset_path
from sam2long.memory_policy import (
    COND_FRAME_SCORE,
    FrameRecord,
    history_retention,
    is_reliable,
    memory_scores,
    modulation_weights,
    plan_memory,
    rank_weights,
)
from sam2long.tree import PathwayTree


def _history(entries, first_step=1):
    """Records for consecutive frames from (iou, obj_logit) pairs; node id = frame."""
    return [
        FrameRecord(step=first_step + i, node=first_step + i, iou=iou, obj_logit=obj)
        for i, (iou, obj) in enumerate(entries)
    ]


def _plan(history, step, *, num_maskmem=7, max_ptrs=16, num_frames=1000, thr=0.1, selection=True):
    return plan_memory(
        history,
        step,
        num_maskmem=num_maskmem,
        max_obj_ptrs_in_encoder=max_ptrs,
        num_frames=num_frames,
        iou_threshold=thr,
        selection=selection,
    )


GOOD, BAD_IOU, OCCLUDED = (0.9, 3.0), (0.05, 3.0), (0.9, -1.0)


def test_reliability_thresholds_are_strict():
    assert is_reliable(FrameRecord(1, 1, 0.11, 0.01), 0.1)
    assert not is_reliable(FrameRecord(1, 1, 0.1, 5.0), 0.1)
    assert not is_reliable(FrameRecord(1, 1, 0.9, 0.0), 0.1)


def test_empty_history_gives_no_memory():
    plan = _plan([], 1)
    assert plan.kept == plan.spatial == plan.pointers == ()


def test_unreliable_frames_are_skipped_but_latest_is_always_kept():
    # frames 1..6: good, bad-iou, occluded, good, occluded, occluded (latest)
    history = _history([GOOD, BAD_IOU, OCCLUDED, GOOD, OCCLUDED, OCCLUDED])
    plan = _plan(history, 7)
    assert [r.step for r in plan.kept] == [1, 4, 6]
    # spatial positions by rank: latest kept → t_pos 6, then 5, 4 (oldest first in the list)
    assert [(m.step, m.position) for m in plan.spatial] == [(1, 4), (4, 5), (6, 6)]
    # pointers: most recent first, distance = rank, never the oldest kept frame (official off-by-one)
    assert [(m.step, m.position) for m in plan.pointers] == [(6, 1), (4, 2)]
    assert [m.obj_logit for m in plan.spatial] == [3.0, 3.0, -1.0]


def test_latest_frame_not_duplicated_when_reliable():
    plan = _plan(_history([GOOD, GOOD]), 3)
    assert [r.step for r in plan.kept] == [1, 2]


def test_first_branching_frame_has_no_non_cond_pointer():
    plan = _plan(_history([GOOD]), 2)
    assert [r.step for r in plan.kept] == [1]
    assert [(m.step, m.position) for m in plan.spatial] == [(1, 6)]
    assert plan.pointers == ()


def test_threshold_changes_selection():
    history = _history([(0.2, 1.0), (0.35, 1.0), (0.25, 1.0)])
    assert [r.step for r in _plan(history, 4, thr=0.1).kept] == [1, 2, 3]
    assert [r.step for r in _plan(history, 4, thr=0.3).kept] == [2, 3]


def test_walk_limit_depends_on_pointer_budget_and_video_length():
    history = _history([GOOD] * 30)
    plan = _plan(history, 31, max_ptrs=16)
    assert [r.step for r in plan.kept] == list(range(16, 31))  # M - 1 = 15 reliable frames
    assert len(plan.spatial) == 6 and [m.step for m in plan.spatial] == list(range(25, 31))
    assert len(plan.pointers) == 14 and plan.pointers[-1].position == 14
    # the budget is min(num_frames, max_obj_ptrs_in_encoder)
    plan = _plan(history, 31, max_ptrs=16, num_frames=10)
    assert [r.step for r in plan.kept] == list(range(22, 31))


def test_latest_unreliable_frame_is_added_beyond_the_walk_limit():
    history = _history([GOOD] * 20 + [OCCLUDED])
    plan = _plan(history, 22, max_ptrs=16)
    assert len(plan.kept) == 16
    assert plan.kept[-1].step == 21 and plan.kept[0].step == 6
    assert len(plan.pointers) == 15


def test_spatial_memory_is_limited_to_num_maskmem_minus_one():
    plan = _plan(_history([GOOD] * 10), 11, num_maskmem=4)
    assert [(m.step, m.position) for m in plan.spatial] == [(8, 1), (9, 2), (10, 3)]


def _official_layout(history, step, start, num_maskmem, max_ptrs, num_frames, thr):
    """The official walk / spatial / pointer loops transcribed over frame indices (reference)."""
    by_frame = {r.step: r for r in history}
    budget = min(num_frames, max_ptrs)
    valid = []
    if step > start + 1:
        for i in range(step - 1, start, -1):
            if by_frame[i].iou > thr and by_frame[i].obj_logit > 0:
                valid.insert(0, i)
            if len(valid) >= budget - 1:
                break
        if step - 1 not in valid:
            valid.append(step - 1)
    spatial = []
    for t_pos in range(1, num_maskmem):
        idx = t_pos - num_maskmem
        if idx < -len(valid):
            continue
        spatial.append((valid[idx], t_pos))
    pointers = []
    for t_diff in range(1, budget):
        if -t_diff <= -len(valid):
            break
        pointers.append((valid[-t_diff], t_diff))
    return valid, spatial, pointers


def test_selection_matches_official_loops_on_random_histories():
    rng = random.Random(0)
    for _ in range(300):
        length = rng.randint(0, 40)
        history = _history(
            [(rng.choice([0.05, 0.1, 0.2, 0.5, 0.9]), rng.choice([-1.0, 0.0, 2.0])) for _ in range(length)]
        )
        kwargs = dict(
            num_maskmem=rng.choice([2, 4, 7]),
            max_ptrs=rng.choice([2, 5, 16]),
            num_frames=rng.choice([3, 20, 500]),
        )
        thr = rng.choice([0.1, 0.3])
        valid, spatial, pointers = _official_layout(
            history, length + 1, 0, kwargs["num_maskmem"], kwargs["max_ptrs"], kwargs["num_frames"], thr
        )
        plan = _plan(history, length + 1, thr=thr, **kwargs)
        assert [r.step for r in plan.kept] == valid
        assert [(m.step, m.position) for m in plan.spatial] == spatial
        assert [(m.step, m.position) for m in plan.pointers] == pointers


def test_selection_off_reproduces_sam2_layout():
    # frames 1..9 with frame 5 missing (compacted / never stored): positions follow frame distance
    history = [r for r in _history([OCCLUDED] * 9) if r.step != 5]
    plan = _plan(history, 10, num_maskmem=7, max_ptrs=6, selection=False)
    assert [(m.step, m.position) for m in plan.spatial] == [(4, 1), (6, 3), (7, 4), (8, 5), (9, 6)]
    assert [(m.step, m.position) for m in plan.pointers] == [(9, 1), (8, 2), (7, 3), (6, 4)]


@pytest.mark.parametrize("selection", [True, False])
def test_layout_depends_only_on_step_offsets(selection):
    """The policy sees processing steps, not frames: a history shifted in time (a propagation that
    started later, or runs backwards through the video) gives the same layout relative to the step."""
    entries = [GOOD, BAD_IOU, GOOD, OCCLUDED, GOOD, GOOD]
    early = _plan(_history(entries, first_step=1), 7, selection=selection)
    late = _plan(_history(entries, first_step=31), 37, selection=selection)
    assert late.pointers, "pointers must be found"
    for a, b in ((early.spatial, late.spatial), (early.pointers, late.pointers)):
        assert [(m.step - 7, m.position) for m in a] == [(m.step - 37, m.position) for m in b]


def test_history_must_be_ordered_and_in_the_past():
    with pytest.raises(ValueError):
        _plan(_history([GOOD, GOOD])[::-1], 5)
    with pytest.raises(ValueError):
        _plan(_history([GOOD, GOOD]), 2)


def test_rank_weights_follow_ascending_scores():
    weights = rank_weights(torch.tensor([[10.0, -2.0, 3.0]]), 0.95, 1.05)
    assert weights[0].tolist() == pytest.approx([1.05, 0.95, 1.0])
    # ties: the earlier entry ranks lower
    assert rank_weights(torch.tensor([2.0, 2.0]), 0.95, 1.05).tolist() == pytest.approx([0.95, 1.05])
    # weights take the dtype of the scores, like the official cast of the linspace
    bf16 = rank_weights(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16), 0.95, 1.05)
    assert bf16.dtype == torch.bfloat16
    assert bf16.tolist() == [torch.tensor(0.95).bfloat16().item(), 1.0, torch.tensor(1.05).bfloat16().item()]


def test_modulation_off_and_single_frame_do_not_scale():
    frames = torch.tensor([[COND_FRAME_SCORE]])
    ptrs = torch.tensor([[COND_FRAME_SCORE, 3.0, 1.0]])
    assert modulation_weights(frames, ptrs, (0.95, 1.05)) == (None, None)
    assert modulation_weights(torch.tensor([[10.0, 2.0]]), ptrs, None) == (None, None)


def test_single_pointer_next_to_several_frames_gets_low_weight():
    frame_w, ptr_w = modulation_weights(torch.tensor([[10.0, 4.0]]), torch.tensor([[10.0]]), (0.95, 1.05))
    assert frame_w[0].tolist() == pytest.approx([1.05, 0.95])
    assert ptr_w[0].tolist() == pytest.approx([0.95])


def test_modulation_weights_from_a_plan():
    history = _history([(0.9, 12.0), (0.9, 2.0), (0.9, 7.0)])
    plan = _plan(history, 4)
    frame_scores, ptr_scores = memory_scores(plan)
    assert frame_scores == [COND_FRAME_SCORE, 12.0, 2.0, 7.0]
    assert ptr_scores == [COND_FRAME_SCORE, 7.0, 2.0]
    frame_w, ptr_w = modulation_weights(torch.tensor([frame_scores]), torch.tensor([ptr_scores]), (0.9, 1.2))
    assert frame_w[0].tolist() == pytest.approx([1.1, 1.2, 0.9, 1.0])
    assert ptr_w[0].tolist() == pytest.approx([1.2, 1.05, 0.9])


@pytest.mark.parametrize("selection", [True, False])
def test_compacted_tree_history_gives_the_same_memory_as_full_history(selection):
    """The tree may drop committed history; plans must not change (exactness of the retention rule)."""
    rng = random.Random(7 if selection else 8)
    kwargs = dict(num_maskmem=4, max_obj_ptrs_in_encoder=6, num_frames=200, iou_threshold=0.3)
    size, keep, recent = history_retention(selection=selection, **kwargs)
    tree = PathwayTree(3, history_size=size, history_filter=keep, history_recent=recent)
    report = tree.start(1, 0.9, 3.0)
    root = report.created[0][0]
    full = {root: [tree.record(root)]}
    dropped = 0
    for frame in range(2, 120):
        nodes = tree.pathway_nodes
        for p in range(3):
            compact = tree.history(p)
            expected = plan_memory(full[nodes[p]], frame, selection=selection, **kwargs)
            got = plan_memory(compact, frame, selection=selection, **kwargs)
            assert (got.spatial, got.pointers) == (expected.spatial, expected.pointers)
            dropped = max(dropped, len(full[nodes[p]]) - len(compact))
        unique, inverse = tree.unique_pathways()
        rows = [
            ([rng.choice([0.05, 0.2, 0.5, 0.9, 0.91]) for _ in range(3)], rng.choice([-2.0, 0.5, 3.0]))
            for _ in unique
        ]
        iou = torch.tensor([rows[i][0] for i in inverse.tolist()])
        obj = torch.tensor([rows[i][1] for i in inverse.tolist()])
        report = tree.branch(frame, iou, obj, 2.0)
        for node, parent, *_ in report.created:
            full[node] = full[nodes[parent]] + [tree.record(node)]
    assert dropped > 50  # the tree really did drop most of the history


def test_presets_load_and_differ_in_iou_threshold():
    assert {"official", "paper"} <= set(available_presets())
    official = SAM2LongConfig.from_preset("official")
    assert official == SAM2LongConfig()
    assert (official.num_pathways, official.iou_threshold, official.uncertainty) == (3, 0.1, 2.0)
    assert official.memory_modulation == (0.95, 1.05) and official.memory_selection
    paper = SAM2LongConfig.from_preset("paper")
    assert paper.iou_threshold == 0.3 and paper.uncertainty == 2.0
    assert SAM2LongConfig.from_preset("paper", max_lag=8, memory_modulation=None).max_lag == 8


def test_config_validation_errors():
    with pytest.raises(ValueError, match="num_pathways"):
        SAM2LongConfig(num_pathways=0)
    with pytest.raises(TypeError, match="num_pathways"):
        SAM2LongConfig(num_pathways=2.0)
    with pytest.raises(ValueError, match="iou_threshold"):
        SAM2LongConfig(iou_threshold=1.5)
    with pytest.raises(ValueError, match="uncertainty"):
        SAM2LongConfig(uncertainty=-1.0)
    with pytest.raises(ValueError, match="memory_modulation"):
        SAM2LongConfig(memory_modulation=(1.1, 0.9))
    with pytest.raises(ValueError, match="memory_modulation"):
        SAM2LongConfig(memory_modulation=(0.95,))
    with pytest.raises(ValueError, match="eps"):
        SAM2LongConfig(eps=0.0)
    with pytest.raises(ValueError, match="max_lag"):
        SAM2LongConfig(max_lag=0)
    with pytest.raises(TypeError, match="memory_selection"):
        SAM2LongConfig(memory_selection="no")
    with pytest.raises(ValueError, match="unknown SAM2Long config keys"):
        SAM2LongConfig.from_dict({"num_pathway": 3})
    with pytest.raises(ValueError, match="unknown SAM2Long preset"):
        preset_path("nope")
    assert SAM2LongConfig(memory_modulation=[0.9, 1.1]).memory_modulation == (0.9, 1.1)


def test_config_from_yaml_file(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text("num_pathways: 5\nmemory_modulation: null\nmemory_selection: false\n")
    config = SAM2LongConfig.from_yaml(path)
    assert (config.num_pathways, config.memory_modulation, config.memory_selection) == (5, None, False)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        SAM2LongConfig.from_yaml(path)
