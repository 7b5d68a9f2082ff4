"""Tests of the SAM2Long candidate selection and pathway tree (sam2long.tree) on scripted numbers."""

import math
import random

import numpy as np
import pytest
import torch

from sam2long.config import SAM2LongConfig
from sam2long.memory_policy import FrameRecord
from sam2long.tree import (
    PathwayTree,
    build_tree,
    is_certain,
    select_candidates,
)

EPS = 1e-5


def _official_select(scores, ious, obj, num_pathways, uncertainty, eps=EPS):
    """The official selection loop, transcribed with Python lists (reference for the tensor version)."""
    all_scores, object_scores = [], []
    for p, row in enumerate(ious):
        object_scores.append(abs(obj[p]))
        for j, iou in enumerate(row):
            signed = iou if obj[p] > 0 else -iou
            all_scores.append((p, j, scores[p] + np.log(iou + eps), signed))
    ordered = sorted(all_scores, key=lambda x: x[2], reverse=True)
    if max(object_scores) > uncertainty:
        kept = ordered[:num_pathways]
    else:
        kept, seen = [], set()
        for entry in ordered:
            value = round(entry[3], 2)
            if value not in seen:
                kept.append(entry)
                seen.add(value)
            if len(kept) == num_pathways:
                break
        if len(kept) < num_pathways:
            represented = {entry[0] for entry in kept}
            for i in range(len(ious)):
                if i not in represented:
                    kept.append(next(e for e in ordered if e[0] == i))
                if len(kept) == num_pathways:
                    break
    return [e[0] for e in kept], [e[1] for e in kept], [float(e[2]) for e in kept]


def _select(scores, ious, obj, num_pathways=3, uncertainty=2.0):
    parent, cand, new = select_candidates(
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(ious, dtype=torch.float32),
        torch.tensor(obj, dtype=torch.float32),
        num_pathways,
        uncertainty,
        EPS,
    )
    return parent.tolist(), cand.tolist(), new.tolist()


def test_score_formula_is_cumulative_log_iou():
    scores = [-0.5, -1.0]
    ious = [[0.8, 0.3, 0.6], [0.9, 0.2, 0.95]]
    parent, cand, new = _select(scores, ious, [5.0, 5.0], num_pathways=6)
    for p, k, s in zip(parent, cand, new):
        f32_iou = float(np.float32(ious[p][k]))
        assert s == pytest.approx(scores[p] + math.log(f32_iou + EPS), abs=1e-12)
    assert new == sorted(new, reverse=True)


def test_certain_frame_keeps_top_p_by_cumulative_score():
    # pathway 0 has a much better history, so its weaker candidates beat pathway 1's best one
    scores = [0.0, -2.0]
    ious = [[0.9, 0.5, 0.4], [0.95, 0.9, 0.1]]
    parent, cand, _ = _select(scores, ious, [3.0, -2.5], num_pathways=3, uncertainty=2.0)
    assert list(zip(parent, cand)) == [(0, 0), (0, 1), (0, 2)]


def test_certainty_threshold_is_strict():
    assert not is_certain(torch.tensor([2.0, -1.0]), 2.0)
    assert is_certain(torch.tensor([0.5, -2.01]), 2.0)
    # |o| == threshold → uncertain branch → duplicates of the rounded IoU 0.9 are skipped
    ious = [[0.9, 0.9, 0.5]]
    parent, cand, _ = _select([0.0], ious, [2.0], num_pathways=2, uncertainty=2.0)
    assert list(zip(parent, cand)) == [(0, 0), (0, 2)]
    parent, cand, _ = _select([0.0], ious, [2.5], num_pathways=2, uncertainty=2.0)
    assert list(zip(parent, cand)) == [(0, 0), (0, 1)]


def test_ties_keep_row_major_order():
    # three identical pathways (the copies every tree starts with): the certain branch picks the best
    # candidate of each copy, in pathway order, as Python's stable sorted(reverse=True) does
    ious = [[0.6, 0.8, 0.7]] * 3
    parent, cand, _ = _select([0.0] * 3, ious, [5.0] * 3)
    assert list(zip(parent, cand)) == [(0, 1), (1, 1), (2, 1)]
    # within a pathway, equal candidates keep the lower candidate index first
    parent, cand, _ = _select([0.0], [[0.7, 0.8, 0.8]], [5.0], num_pathways=2)
    assert list(zip(parent, cand)) == [(0, 1), (0, 2)]


def test_uncertain_frame_keeps_distinct_rounded_signed_iou():
    scores = [0.0, 0.0, 0.0]
    ious = [[0.901, 0.899, 0.5], [0.7, 0.304, 0.3], [0.95, 0.2, 0.1]]
    obj = [1.0, 1.0, -1.0]  # pathway 2 predicts occlusion → its IoUs count as negative values
    parent, cand, _ = _select(scores, ious, obj, num_pathways=5)
    # order by score: (2,0)=.95 (0,0)=.901 (0,1)=.899 (1,0)=.7 (0,2)=.5 (1,1)=.304 (1,2)=.3 ...
    # (0,1) rounds to 0.90 like (0,0) → skipped; (2,0) is -0.95, distinct from everything
    assert list(zip(parent, cand)) == [(2, 0), (0, 0), (1, 0), (0, 2), (1, 1)]


def test_rounding_uses_python_round_half_even():
    # 0.125 is exact in float32; Python's round gives 0.12 (half-to-even), equal to round(0.12, 2),
    # so the second candidate is a duplicate (a half-up rule would make it 0.13 and keep it)
    parent, cand, _ = _select([0.0], [[0.125, 0.12, 0.05]], [1.0], num_pathways=2)
    assert list(zip(parent, cand)) == [(0, 0), (0, 2)]


def test_fill_up_uses_each_unrepresented_parent_best_candidate_in_parent_order():
    scores = [0.0, -0.1, -0.2]
    ious = [[0.9, 0.9, 0.9], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9]]
    parent, cand, new = _select(scores, ious, [1.0, 1.0, 1.0])
    # only one distinct rounded value exists → keep (0,0), then parents 1 and 2 contribute their best
    assert list(zip(parent, cand)) == [(0, 0), (1, 0), (2, 0)]
    assert new[1] == pytest.approx(-0.1 + math.log(float(np.float32(0.9)) + EPS))


def test_fill_up_stops_when_full():
    scores = [0.0, -5.0, -5.0]
    ious = [[0.9, 0.5, 0.5], [0.9, 0.5, 0.5], [0.9, 0.5, 0.5]]
    parent, cand, _ = _select(scores, ious, [1.0, 1.0, 1.0])
    # distinct values 0.9 (0,0) and 0.5 (0,1) → 2 kept from parent 0; parent 1 fills the last slot
    assert list(zip(parent, cand)) == [(0, 0), (0, 1), (1, 0)]


def test_matches_official_loop_on_random_inputs():
    rng = random.Random(0)
    values = [0.05, 0.3, 0.304, 0.5, 0.7, 0.71, 0.899, 0.9, 0.901, 0.125, 0.135]
    for _ in range(300):
        num_p = rng.choice([1, 2, 3, 4])
        scores = [rng.choice([0.0, -0.1, -0.5, -1.3]) for _ in range(num_p)]
        ious = [[rng.choice(values) for _ in range(3)] for _ in range(num_p)]
        obj = [rng.choice([-3.0, -0.5, 0.0, 0.5, 2.0, 3.0]) for _ in range(num_p)]
        ious32 = [[float(np.float32(v)) for v in row] for row in ious]
        expected = _official_select(scores, ious32, obj, num_p, 2.0)
        got = _select(scores, ious, obj, num_pathways=num_p)
        assert got[0] == expected[0] and got[1] == expected[1]
        assert got[2] == pytest.approx(expected[2], abs=1e-12)


def _row(vals):
    return torch.tensor(vals, dtype=torch.float32)


def test_start_commits_root_and_dedupes_copies():
    tree = PathwayTree(3)
    report = tree.start(step=1, iou=0.9, obj_logit=5.0, candidate=2)
    ((root, parent, cand, *_),) = report.created
    assert (parent, cand) == (-1, 2)
    assert report.committed == ((1, root),)
    assert tree.pathway_nodes == (root, root, root)
    unique, inverse = tree.unique_pathways()
    assert unique == [root] and inverse.tolist() == [0, 0, 0]
    # certain frame: the copies give the same best candidate → one shared node, committed at once
    report = tree.branch(2, _row([[0.5, 0.8, 0.6]] * 3), _row([4.0] * 3), uncertainty=2.0)
    assert len(report.created) == 1
    node = report.created[0][0]
    assert report.created[0].candidate == 1 and report.created[0].parent == root
    assert report.committed == ((2, node),)
    assert tree.scores.tolist() == pytest.approx([math.log(float(np.float32(0.8)) + EPS)] * 3)


def test_divergence_then_coalescence_commits_shared_prefix():
    tree = PathwayTree(2)
    tree.start(1, 0.9, 5.0)
    # frame 2: uncertain → two distinct candidates of the root → two nodes, nothing committed yet
    r2 = tree.branch(2, _row([[0.9, 0.6, 0.1]] * 2), _row([0.5, 0.5]), uncertainty=2.0)
    a, b = (n for n, *_ in r2.created)
    assert r2.committed == ()
    assert tree.committed_step == 1
    # frame 3: certain; both survivors descend from node a (pathway 0) → frames 2 committed to a
    r3 = tree.branch(3, _row([[0.9, 0.8, 0.1], [0.2, 0.1, 0.1]]), _row([5.0, 5.0]), uncertainty=2.0)
    assert [f for f, _ in r3.committed] == [2]
    assert r3.committed[0][1] == a
    assert b in r3.released
    assert tree.committed_step == 2
    assert [r.step for r in tree.history(1)] == [1, 2, 3]
    assert tree.history(1)[-1].iou == pytest.approx(0.8)


def test_history_records_iou_of_chosen_candidate_and_parent_obj_logit():
    tree = PathwayTree(2)
    tree.start(5, 0.7, 1.5)
    tree.branch(6, _row([[0.9, 0.6, 0.1]] * 2), _row([-0.5, -0.5]), uncertainty=2.0)
    hist = tree.history(1)
    assert [(r.step, r.iou, r.obj_logit) for r in hist] == [
        (5, pytest.approx(0.7), 1.5),
        (6, pytest.approx(0.6), -0.5),
    ]


def _lineage_run(num_pathways, steps, seed, max_lag=None, history=(None, None)):
    """Drive a tree with random decoder outputs keyed by lineage (identical lineages get identical outputs,
    as real identical pathways do) and, in lockstep, the official bookkeeping (per-pathway frame→entry dicts,
    answer = pathway 0 after the last frame). Returns (tree outputs, official outputs, tree)."""
    rng = random.Random(seed)
    values = [0.2, 0.5, 0.51, 0.7, 0.9, 0.901, 0.95]
    outputs = {}

    def output(lineage):
        if lineage not in outputs:
            outputs[lineage] = (
                [rng.choice(values) for _ in range(3)],
                rng.choice([-3.0, -1.0, 0.5, 1.5, 4.0]),
            )
        return outputs[lineage]

    tree = PathwayTree(num_pathways, max_lag=max_lag, history_size=history[0], history_filter=history[1])
    report = tree.start(1, 0.9, 4.0)
    root = report.created[0][0]
    lineage = {root: ()}
    emitted = dict((f, lineage[n]) for f, n in report.committed)
    reports = [report]
    # official state: per pathway (lineage, score, frame->lineage-at-frame dict)
    off_lin = [()] * num_pathways
    off_scores = [0.0] * num_pathways
    off_pick = [{1: ()} for _ in range(num_pathways)]
    for frame in range(2, 2 + steps):
        unique, inverse = tree.unique_pathways()
        rows = [output(lineage[n]) for n in unique]
        iou = _row([rows[i][0] for i in inverse.tolist()])
        obj = _row([rows[i][1] for i in inverse.tolist()])
        before = tree.pathway_nodes
        report = tree.branch(frame, iou, obj, uncertainty=2.0)
        reports.append(report)
        for node, parent, cand, *_ in report.created:
            lineage[node] = lineage[before[parent]] + (cand,)
        for f, n in report.committed:
            emitted[f] = lineage[n]
        if max_lag is None:
            o_rows = [output(lin) for lin in off_lin]
            p, k, s = _official_select(
                off_scores,
                [[float(np.float32(v)) for v in r[0]] for r in o_rows],
                [r[1] for r in o_rows],
                num_pathways,
                2.0,
            )
            new_pick = []
            for pp, kk in zip(p, k):
                d = dict(off_pick[pp])
                d[frame] = off_lin[pp] + (kk,)
                new_pick.append(d)
            off_lin = [off_lin[pp] + (kk,) for pp, kk in zip(p, k)]
            off_scores, off_pick = s, new_pick
            assert tree.scores.tolist() == pytest.approx(off_scores, abs=1e-12)
            assert [lineage[n] for n in tree.pathway_nodes] == off_lin
    final = tree.finish()
    for f, n in final.committed:
        emitted[f] = lineage[n]
    reports.append(final)
    return emitted, off_pick[0], reports


@pytest.mark.parametrize("seed", range(8))
def test_streamed_output_equals_official_backtracking(seed):
    emitted, official, _ = _lineage_run(3, 25, seed)
    assert sorted(emitted) == list(range(1, 27))
    assert emitted == official


def test_every_frame_committed_once_and_all_nodes_released():
    _, _, reports = _lineage_run(3, 30, seed=3)
    frames = [f for r in reports for f, _ in r.committed]
    assert frames == sorted(frames) and len(frames) == len(set(frames)) == 31
    created = {n for r in reports for n, *_ in r.created}
    released = [n for r in reports for n in r.released]
    assert len(released) == len(set(released))
    assert set(released) == created


def test_released_nodes_are_never_used_again():
    _, _, reports = _lineage_run(3, 30, seed=5)
    gone = set()
    for report in reports:
        used = {n for _, n in report.committed}
        assert not (used & gone)
        gone.update(report.released)


def test_max_lag_forces_commitment_to_best_pathway():
    tree = PathwayTree(2, max_lag=2)
    tree.start(1, 0.9, 4.0)
    uncertain = _row([0.5, 0.5])
    # frame 2: two distinct candidates of the root survive (uncertain frame) → lines A (iou .9) and B (.5)
    r2 = tree.branch(2, _row([[0.9, 0.5, 0.05]] * 2), uncertain, 2.0)
    node_a, node_b = (n for n, *_ in r2.created)
    # each line only proposes one distinct IoU, so both lines survive on their own: no coalescence
    split = _row([[0.9, 0.9, 0.9], [0.5, 0.5, 0.5]])
    r3 = tree.branch(3, split, uncertain, 2.0)
    assert r3.committed == () and r3.forced_step is None
    r4 = tree.branch(4, split, uncertain, 2.0)
    # lag 4 - 1 > 2 → frame 2 is decided for the best pathway (line A); line B is replaced by a copy of A
    assert r4.forced_step == 2
    assert [f for f, _ in r4.committed] == [2, 3, 4]
    assert r4.committed[0][1] == node_a
    assert node_b in r4.released
    assert tree.pathway_nodes[0] == tree.pathway_nodes[1]
    assert tree.scores[0] == tree.scores[1]
    r5 = tree.branch(5, _row([[0.9, 0.9, 0.9]] * 2), uncertain, 2.0)
    assert [f for f, _ in r5.committed] == [5]


def test_forced_pruning_copies_best_pathway():
    tree = PathwayTree(3, max_lag=1)
    tree.start(1, 0.9, 4.0)
    r2 = tree.branch(2, _row([[0.9, 0.5, 0.3]] * 3), _row([0.5] * 3), 2.0)
    # frame 3: pathways keep their own lines; max_lag 1 forces frame 2 to pathway 0's choice
    report = tree.branch(3, _row([[0.9, 0.5, 0.3], [0.9, 0.5, 0.3], [0.9, 0.5, 0.3]]), _row([5.0] * 3), 2.0)
    assert report.forced_step == 2
    assert tree.committed_step >= 2
    anchor = tree.ancestor(tree.pathway_nodes[0], 2)
    for node in tree.pathway_nodes:
        assert tree.ancestor(node, 2) == anchor
    assert anchor == next(c.node for c in r2.created if c.candidate == 0)


def test_memory_stays_bounded_with_max_lag_and_history_limit():
    rng = random.Random(1)
    tree = PathwayTree(3, max_lag=4, history_size=5, history_filter=lambda r: r.iou > 0.3 and r.obj_logit > 0)
    tree.start(1, 0.9, 4.0)
    peak = 0
    for frame in range(2, 400):
        iou = _row([[rng.random() for _ in range(3)] for _ in range(3)])
        obj = _row([rng.choice([-1.0, 0.5, 1.0, 3.0]) for _ in range(3)])
        tree.branch(frame, iou, obj, 2.0)
        peak = max(peak, tree.num_stored_nodes)
    # at most P new nodes per undecided frame + retained committed history
    assert peak <= 3 * 4 + 5 + 1


def test_invalid_usage_raises():
    tree = PathwayTree(2)
    with pytest.raises(RuntimeError):
        tree.branch(2, _row([[0.5, 0.5, 0.5]] * 2), _row([1.0, 1.0]), 2.0)
    tree.start(1, 0.9, 1.0)
    with pytest.raises(ValueError):
        tree.branch(1, _row([[0.5, 0.5, 0.5]] * 2), _row([1.0, 1.0]), 2.0)
    with pytest.raises(ValueError):
        tree.advance(2, [0], [0], [0.0], _row([[0.5, 0.5, 0.5]] * 2), _row([1.0, 1.0]))
    with pytest.raises(ValueError):
        PathwayTree(0)
    with pytest.raises(ValueError):
        PathwayTree(2, max_lag=0)


def test_build_tree_from_config():
    tree = build_tree(
        SAM2LongConfig(num_pathways=4, max_lag=6), num_maskmem=7, max_obj_ptrs_in_encoder=16, num_frames=50
    )
    assert (tree.num_pathways, tree.max_lag, tree.history_size) == (4, 6, 16)
    assert tree.history_filter(FrameRecord(1, 1, 0.2, 1.0)) and not tree.history_filter(
        FrameRecord(1, 1, 0.05, 1.0)
    )
    assert (
        build_tree(
            SAM2LongConfig(memory_selection=False), num_maskmem=7, max_obj_ptrs_in_encoder=16, num_frames=50
        ).history_filter
        is None
    )


def _is_stored(tree: PathwayTree, node: int) -> bool:
    try:
        tree.record(node)
    except KeyError:
        return False
    return True


def test_tree_owns_payloads_and_frees_released_ones_after_the_next_update():
    tree: PathwayTree[str] = PathwayTree(2, history_size=0)
    root = tree.start(1, 0.9, 4.0).created[0].node
    tree.attach(root, "root")
    attached = {root: "root"}
    r2 = tree.branch(2, _row([[0.9, 0.5, 0.3]] * 2), _row([0.5] * 2), 2.0)  # uncertain: two children
    for c in r2.created:
        tree.attach(c.node, f"n{c.candidate}")
        attached[c.node] = f"n{c.candidate}"
    a, b = (c.node for c in r2.created)
    # frame 3: both pathways descend from a -> b is released, frame 2 committed to a, root compacted away
    r3 = tree.branch(3, _row([[0.9, 0.5, 0.3], [0.1, 0.1, 0.1]]), _row([5.0, 5.0]), 2.0)
    for c in r3.created:
        tree.attach(c.node, "x")
        attached[c.node] = "x"
    assert b in r3.released and root in r3.released
    assert [(c.step, c.node) for c in r3.committed][0] == (2, a)
    assert tree.payload(b) == "n1" and tree.payload(root) == "root", "readable until the next update"
    r4 = tree.branch(4, _row([[0.9, 0.5, 0.3]] * 2), _row([5.0, 5.0]), 2.0)
    for node in (b, root):
        with pytest.raises(KeyError):
            tree.payload(node)
    assert tree.payload(a) == "n0"
    # nothing else is held: a payload is readable exactly while its node is stored or was just released
    for node, value in attached.items():
        if _is_stored(tree, node) or node in r4.released:
            assert tree.payload(node) == value
        else:
            with pytest.raises(KeyError):
                tree.payload(node)
    with pytest.raises(KeyError):
        tree.attach(b, "late")
