"""SAM2Long video predictor: SAM 2 propagation with a per-object tree of memory pathways.

Prompts, sessions and outputs are those of :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor`;
only :meth:`SAM2LongVideoPredictor.propagate_in_video` changes. It drives the same engine calls as
SAM 2 (:mod:`sam2.engine`), once per frame for all objects x distinct pathways:

1. every live (object, distinct pathway) becomes a :class:`BatchRow`; its memory is the object's
   conditioning memory plus the frames its pathway's policy selects (:mod:`sam2long.memory_policy`),
   modulated by occlusion rank; all rows are padded into one memory batch;
2. ``decode_candidates`` runs memory attention and the mask decoder once (3 candidates per row);
3. each object's :class:`~sam2long.tree.PathwayTree` picks its next ``P`` pathways;
4. ``encode_memories`` runs the memory encoder once on all newly chosen candidates, whose memories
   become the payloads of the new tree nodes;
5. every frame on which all pathways of all objects agree is yielded (exactly the end-of-video answer).

Before an object's first conditioning frame (objects prompted on a later frame) and on the frame right
after each conditioning frame, the object is tracked greedily (one pathway, SAM 2's best-IoU choice).
Frames are addressed by processing *step* (:class:`~sam2.engine.Timeline`), so the tree and the memory
policy never see the tracking direction.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Optional

import torch
from torch import Tensor

from sam2.engine import Candidates, FrameFeatures, NewMemories, Timeline
from sam2.modeling.memory import ItemMemory, PointerMemory, SpatialMemory
from sam2.precision import autocast_method
from sam2.sam2_video_predictor import COND, InferenceState, SAM2VideoPredictor
from sam2long.config import SAM2LongConfig
from sam2long.memory_policy import memory_scores, modulation_weights, plan_memory
from sam2long.tree import Created, PathwayTree, StepReport, build_tree, is_certain


class RowMode(Enum):
    """How an object's rows are advanced on a frame."""

    ROOT = "root"  # first tracked frame of the tree, or the frame after a conditioning frame
    GREEDY = "greedy"  # before the object's first conditioning frame: every pathway takes SAM 2's choice
    BRANCH = "branch"  # the tree selects among all pathways' candidates


@dataclass
class ObjectTrack:
    """Propagation state of one object (lives for one ``propagate_in_video`` call)."""

    obj_idx: int
    tree: PathwayTree[NewMemories]
    last_cond_step: Optional[int] = None  # step of the latest conditioning frame seen
    after_cond: bool = False  # the next tracked frame is the unbranched one after a conditioning frame
    waiting: bool = False  # not joined yet (objects_join_at_first_prompt): absent, no compute
    # memories dropped by clear_non_cond_mem_around_input
    cleared_steps: set[int] = field(default_factory=set)
    outputs: dict[int, Tensor] = field(default_factory=dict)  # committed, not yet yielded: step -> logits

    def mode(self) -> RowMode:
        if not self.tree.started or self.after_cond:
            return RowMode.ROOT
        if self.last_cond_step is None:
            return RowMode.GREEDY
        return RowMode.BRANCH


@dataclass(frozen=True)
class BatchRow:
    """One row of the per-frame batch: an object's distinct pathway node (or its single track)."""

    track: ObjectTrack
    pathway: Optional[int]  # a pathway sitting on this row's node; None before the tree starts


@dataclass(frozen=True)
class ChosenCandidate:
    """A new tree node and the batch row / decoder candidate whose memory it stores."""

    track: ObjectTrack
    node: int
    row: int
    candidate: int


@dataclass(frozen=True)
class CreatedNode:
    """A node a tree created on a frame, with its mask (for plots, demos and tests)."""

    node: int
    parent: Optional[int]  # parent node (None for a root)
    candidate: int  # decoder candidate index
    iou: float
    obj_logit: float
    pred_masks: Optional[Tensor]  # [1, 1, 4h, 4w] low-res logits; None if pruned at once (max_lag)


@dataclass(frozen=True)
class PathwayStep:
    """What one object's memory tree did on one frame: the record behind pathway plots.

    ``kind`` is ``"prompt"`` (a conditioning frame: pathways collapse onto the best one), ``"root"``
    (an unbranched frame starting the tree), ``"greedy"`` (before the object's first prompt),
    ``"branch"`` (a tree selection; ``certain`` tells which rule was used), ``"absent"`` (not joined yet,
    with ``objects_join_at_first_prompt``) or ``"end"`` (after the last
    frame, with the final pathways before the best one is committed). ``scores``, ``ious`` and
    ``obj_logits`` are per pathway after the frame (IoU / object logit of the candidate each pathway
    holds). ``committed_frames`` became final on this frame.
    """

    obj_id: Any
    frame_idx: Optional[int]  # None for "end"
    kind: str
    certain: Optional[bool]
    pathway_nodes: tuple[int, ...]
    scores: tuple[float, ...]
    ious: tuple[float, ...]
    obj_logits: tuple[float, ...]
    best_pathway: Optional[int]
    created: tuple[CreatedNode, ...]
    committed_frames: tuple[int, ...]
    forced_frame: Optional[int]
    stored_nodes: int


PathwayObserver = Callable[[PathwayStep], None]


def _live(report: StepReport) -> list[Created]:
    """Nodes created by an update that are still in the tree (``max_lag`` may prune new ones at once)."""
    released = set(report.released)
    return [c for c in report.created if c.node not in released]


class SAM2LongVideoPredictor(SAM2VideoPredictor):
    """:class:`SAM2VideoPredictor` whose propagation keeps ``P`` memory pathways per object.

    Args:
        sam2long: the tree settings (:class:`~sam2long.config.SAM2LongConfig`; default: the
            ``official`` preset, P=3, iou_threshold=0.1, uncertainty=2, modulation (0.95, 1.05)).
        batch_objects: run all objects' pathways in one model pass per frame (fastest). ``False`` runs
            one pass per object, so an object's results never depend on which other objects are
            tracked, bit for bit (batched passes agree with them up to float rounding).
        store_outputs: keep the final (best-path) outputs of tracked frames in the session, as SAM 2
            does, so prompts added after propagation see them as memory. ``False`` keeps memory use
            flat in the video length (outputs are only yielded). This is the policy of the session's
            output store (:class:`~sam2.utils.output_store.OutputStore`, ``retain``); with ``True`` the
            store keeps recent outputs in memory and spills older ones to disk.
        **kwargs: :class:`SAM2VideoPredictor` / ``SAM2Base`` arguments. Options the tree cannot honour
            are refused here, naming the option: ``memory_temporal_stride_for_eval != 1``,
            ``non_overlap_masks_for_mem_enc=True`` and ``num_maskmem < 2``.
    """

    def __init__(
        self,
        sam2long: Optional[SAM2LongConfig] = None,
        store_outputs: bool = True,
        batch_objects: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.memory_temporal_stride_for_eval != 1:
            raise ValueError(
                f"SAM2Long does not support memory_temporal_stride_for_eval={self.memory_temporal_stride_for_eval}: "
                "its pathways choose memory frames by reliability, not on a fixed stride; use 1"
            )
        if self.non_overlap_masks_for_mem_enc:
            raise ValueError(
                "SAM2Long does not support non_overlap_masks_for_mem_enc=True: memories are encoded per "
                "pathway, before the objects' final masks are known; use non_overlap_masks for the outputs"
            )
        if self.num_maskmem < 2:
            raise ValueError(
                f"SAM2Long needs num_maskmem >= 2 (a memory of past frames), got {self.num_maskmem}"
            )
        self.sam2long = sam2long if sam2long is not None else SAM2LongConfig()
        if not isinstance(self.sam2long, SAM2LongConfig):
            raise TypeError(f"sam2long must be a SAM2LongConfig, got {type(self.sam2long).__name__}")
        self.store_outputs = store_outputs
        self.batch_objects = batch_objects

    def _retains_tracked_outputs(self) -> bool:
        """Sessions keep best-path outputs only with ``store_outputs`` (the tree holds the memory)."""
        return self.store_outputs

    # ------------------------------------------------------------------ propagation

    @torch.inference_mode()
    @autocast_method
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: Optional[int] = None,
        max_frame_num_to_track: Optional[int] = None,
        reverse: bool = False,
        objects_join_at_first_prompt: bool = False,
        observer: Optional[PathwayObserver] = None,
        before_frame: Optional[Callable[[int], None]] = None,
    ) -> Iterator[tuple[int, list[Any], Tensor]]:
        """Track all objects with the memory tree, yielding ``(frame_idx, obj_ids, video_res_masks)``.

        Frames come out in processing order, each as soon as its answer is final for every object
        (with ``max_lag`` unset, identical to choosing the best pathway after the last frame).
        ``objects_join_at_first_prompt`` is SAM 2's (an object is absent, and costs nothing, before
        its first prompted frame in processing order). ``observer``, if given, receives a
        :class:`PathwayStep` per object and processed frame, plus an ``"end"`` record per object: the
        tree's decisions, for plots and analysis. Prompts added while it runs and ``before_frame``
        behave as in :meth:`SAM2VideoPredictor.propagate_in_video`: a prompt on an object's frame
        collapses its tree there; a new object joins the batch on its prompted frame with a tree of its
        own, the other objects' trees go on.
        """
        self.propagate_in_video_preflight(inference_state)
        timeline = self.processing_timeline(inference_state, start_frame_idx, max_frame_num_to_track, reverse)
        run = _Propagation(self, inference_state, timeline, observer)
        for obj_idx in range(self._get_obj_num(inference_state)):
            run.add_track(obj_idx, waiting=objects_join_at_first_prompt)
        steps = self.propagation_steps(
            inference_state, timeline, before_frame, "propagate in video (SAM2Long)"
        )
        with contextlib.closing(steps):
            for step, _ in steps:
                # objects created during the propagation join on their first prompted frame
                for obj_idx in range(len(run.tracks), self._get_obj_num(inference_state)):
                    run.add_track(obj_idx, waiting=True)
                run.pending.append(step)
                run.advance(step)
                yield from run.emit_ready()
        run.finish()
        yield from run.emit_ready()


class _Propagation:
    """One ``propagate_in_video`` call: the per-frame batch over all objects and pathways."""

    def __init__(
        self,
        predictor: SAM2LongVideoPredictor,
        state: InferenceState,
        timeline: Timeline,
        observer: Optional[PathwayObserver],
    ) -> None:
        self.model = predictor
        self.config = predictor.sam2long
        self.state = state
        self.timeline = timeline
        self.tracks: list[ObjectTrack] = []
        self.observer = observer
        self.pending: deque[int] = deque()  # processed steps not yielded yet

    def add_track(self, obj_idx: int, waiting: bool) -> None:
        """Start tracking object ``obj_idx`` (absent on the frames already processed and not yet yielded)."""
        tree = build_tree(
            self.config,
            num_maskmem=self.model.num_maskmem,
            max_obj_ptrs_in_encoder=self.model.max_obj_ptrs_in_encoder,
            num_frames=self.state["num_frames"],
        )
        track = ObjectTrack(obj_idx, tree, waiting=waiting)
        for step in self.pending:
            track.outputs[step] = self.model.absent_masks(self.state, 1)
        self.tracks.append(track)

    # ------------------------------------------------------------------ output

    def emit_ready(self) -> Iterator[tuple[int, list[Any], Tensor]]:
        """Yield the oldest pending frames whose output is final for every object."""
        pending = self.pending
        while pending and all(pending[0] in track.outputs for track in self.tracks):
            step = pending.popleft()
            device = self.state["device"]
            low_res = torch.cat([track.outputs.pop(step).to(device) for track in self.tracks], dim=0)
            obj_ids = self.state["obj_ids"][: len(self.tracks)]  # objects created meanwhile join later
            yield self.timeline.frame(step), obj_ids, self.model.video_res_masks(self.state, low_res)

    def finish(self) -> None:
        """End of the video: every started tree commits its best pathway."""
        for track in self.tracks:
            if track.tree.started:
                final = self._step_record(track, None, "end", None, (), StepReport())
                report = track.tree.finish()
                if self.observer is not None:
                    committed = tuple(self.timeline.frame(c.step) for c in report.committed)
                    self.observer(replace(final, committed_frames=committed))
                self._apply_report(track, report)

    # ------------------------------------------------------------------ one frame

    def advance(self, step: int) -> None:
        """Advance every object by one frame: one batched model pass over all objects' pathways, or
        one pass per object without ``batch_objects``."""
        frame_idx = self.timeline.frame(step)
        tracked = []
        for track in self.tracks:
            cond_out = self.state["output_dict_per_obj"][track.obj_idx][COND].get(frame_idx)
            if cond_out is not None:
                track.waiting = False
                self._enter_cond_frame(track, cond_out, step)
            elif track.waiting:
                track.outputs[step] = self.model.absent_masks(self.state, 1)
                self._observe(track, frame_idx, "absent", None, StepReport())
            else:
                tracked.append(track)
        groups = [tracked] if self.model.batch_objects else [[track] for track in tracked]
        for group in groups:
            if group:
                self._advance_batch(step, group)

    def _advance_batch(self, step: int, tracks: list[ObjectTrack]) -> None:
        """One model pass over the pathways of ``tracks`` on a tracked (non-conditioning) frame."""
        frame_idx = self.timeline.frame(step)
        rows: list[BatchRow] = []
        rows_of: dict[int, list[int]] = {}
        for track in tracks:
            first = len(rows)
            if track.mode() is RowMode.BRANCH:
                nodes, inverse = track.tree.unique_pathways()
                rows.extend(BatchRow(track, int((inverse == u).nonzero()[0])) for u in range(len(nodes)))
            else:
                rows.append(BatchRow(track, 0 if track.tree.started else None))
            rows_of[track.obj_idx] = list(range(first, len(rows)))

        features = self.model.frame_features(self.state, frame_idx, len(rows))
        memory = self.model.assemble_memory(
            [self._row_memory(row, step) for row in rows],
            self.state["num_frames"],
            self.state["device"],
            features.vision_feats[-1].dtype,
        )
        candidates = self.model.decode_candidates(features, memory)
        # One small host copy per frame for all the trees' decisions, made in float32 whatever the
        # network computed in: every row's candidate IoUs and its object-score logit.
        host = torch.cat([candidates.ious.float(), candidates.object_score_logits.float()], dim=1).cpu()
        ious, obj_scores = host[:, :-1], host[:, -1:]

        chosen: list[ChosenCandidate] = []
        reports: list[tuple[ObjectTrack, StepReport, RowMode, Optional[bool]]] = []
        for track in tracks:
            mode = track.mode()
            report, picks, certain = self._advance_tree(
                track, mode, rows_of[track.obj_idx], step, ious, obj_scores
            )
            chosen.extend(picks)
            reports.append((track, report, mode, certain))

        self._encode(features, candidates, chosen)
        for track, report, mode, certain in reports:
            self._observe(track, frame_idx, mode.value, certain, report)
            self._apply_report(track, report)

    def _advance_tree(
        self, track: ObjectTrack, mode: RowMode, rows: list[int], step: int, ious: Tensor, obj_scores: Tensor
    ) -> tuple[StepReport, list[ChosenCandidate], Optional[bool]]:
        """Move one object's tree to this frame given its rows' candidates.

        Returns the report, the new nodes to encode and, on branching frames, whether the frame was
        certain. Unbranched frames take SAM 2's best-IoU candidate.
        """
        tree = track.tree
        if mode is not RowMode.BRANCH:
            row = rows[0]
            best = int(torch.argmax(ious[row]))
            iou, obj = float(ious[row, best]), float(obj_scores[row, 0])
            if not tree.started:
                report = tree.start(step, iou, obj, best)
            elif mode is RowMode.ROOT:
                report = tree.restart(step, iou, obj, best)
            else:
                P = tree.num_pathways
                report = tree.advance(
                    step, [0] * P, [best] * P, [0.0] * P, ious[[row] * P], obj_scores[[row] * P, 0]
                )
            track.after_cond = False
            return report, [ChosenCandidate(track, c.node, row, best) for c in _live(report)], None
        _, inverse = tree.unique_pathways()
        pathway_rows = torch.tensor(rows)[inverse]
        pathway_obj = obj_scores[pathway_rows, 0]
        certain = is_certain(pathway_obj, self.config.uncertainty)
        report = tree.branch(step, ious[pathway_rows], pathway_obj, self.config.uncertainty, self.config.eps)
        picks = [
            ChosenCandidate(track, c.node, int(pathway_rows[c.parent_pathway]), c.candidate)
            for c in _live(report)
        ]
        return report, picks, certain

    def _enter_cond_frame(self, track: ObjectTrack, cond_out: dict[str, Any], step: int) -> None:
        """A prompted frame: collapse the object's pathways and output its prompted mask."""
        frame_idx = self.timeline.frame(step)
        if track.tree.started:
            self._apply_report(track, track.tree.collapse())
        track.last_cond_step = step
        track.after_cond = True
        track.outputs[step] = cond_out["pred_masks"]
        self.state["frames_tracked_per_obj"][track.obj_idx][frame_idx] = {"reverse": self.timeline.reverse}
        if self.model.clear_non_cond_mem_around_input:
            # As SAM 2: memories of the frames just before a prompt may show the object before its
            # correction; drop them from the pathways and from the session.
            track.cleared_steps.update(range(step - self.model.num_maskmem, step))
            self.model.drop_memories_near(self.state, track.obj_idx, frame_idx)
        self._observe(track, frame_idx, "prompt", None, StepReport())

    def _row_memory(self, row: BatchRow, step: int) -> ItemMemory:
        """Conditioning frames + the pathway's selected history, with modulation weights."""
        track, model = row.track, self.model
        frame_idx = self.timeline.frame(step)
        cond = model.conditioning_memory(self.state, track.obj_idx, frame_idx, self.timeline.reverse)

        history = [] if row.pathway is None else track.tree.history(row.pathway)
        if self.config.memory_selection and track.last_cond_step is not None:
            history = [r for r in history if r.step > track.last_cond_step]
        if track.cleared_steps:
            history = [r for r in history if r.step not in track.cleared_steps]
        plan = plan_memory(
            history,
            step,
            num_maskmem=model.num_maskmem,
            max_obj_ptrs_in_encoder=model.max_obj_ptrs_in_encoder,
            num_frames=self.state["num_frames"],
            iou_threshold=self.config.iou_threshold,
            selection=self.config.memory_selection,
        )
        if not model.use_obj_ptrs_in_encoder:
            plan = replace(plan, pointers=())

        frame_scores, ptr_scores = memory_scores(plan, len(cond.spatial), len(cond.pointers))
        frame_w, ptr_w = modulation_weights(
            torch.tensor(frame_scores, dtype=torch.float32),
            torch.tensor(ptr_scores, dtype=torch.float32) if ptr_scores else None,
            self.config.memory_modulation,
        )
        frame_w = [1.0] * len(frame_scores) if frame_w is None else frame_w.tolist()
        ptr_w = [1.0] * len(ptr_scores) if ptr_w is None else ptr_w.tolist()

        pos_enc = model.memory_pos_enc(self.state)
        spatial = [replace(entry, weight=w) for entry, w in zip(cond.spatial, frame_w)]
        spatial += [
            SpatialMemory(
                track.tree.payload(ref.node).maskmem_features,
                pos_enc,
                model.num_maskmem - ref.position - 1,
                w,
            )
            for ref, w in zip(plan.spatial, frame_w[len(cond.spatial) :])
        ]
        pointers = [replace(entry, weight=w) for entry, w in zip(cond.pointers, ptr_w)]
        pointers += [
            PointerMemory(track.tree.payload(ref.node).obj_ptr, ref.position, w)
            for ref, w in zip(plan.pointers, ptr_w[len(cond.pointers) :])
        ]
        return ItemMemory(spatial=spatial, pointers=pointers)

    def _encode(self, features: FrameFeatures, candidates: Candidates, chosen: list[ChosenCandidate]) -> None:
        """Memory encoder (one batch) for every new node; the memories become the nodes' payloads."""
        if not chosen:
            return
        device = candidates.ious.device
        rows = torch.tensor([c.row for c in chosen], device=device)
        cands = torch.tensor([c.candidate for c in chosen], device=device)
        memories = self.model.encode_memories(self.state, features, candidates, rows, cands)
        for i, c in enumerate(chosen):
            c.track.tree.attach(c.node, memories.row(i))

    def _apply_report(self, track: ObjectTrack, report: StepReport) -> None:
        """Record committed frames as outputs (and, with ``store_outputs``, in the session)."""
        for commit in report.committed:
            data = track.tree.payload(commit.node)
            pred_masks = self.model.postprocess_masks(data.pred_masks)
            track.outputs[commit.step] = pred_masks
            frame_idx = self.timeline.frame(commit.step)
            self.state["frames_tracked_per_obj"][track.obj_idx][frame_idx] = {
                "reverse": self.timeline.reverse
            }
            self.model.store_tracked_output(self.state, track.obj_idx, frame_idx, data, pred_masks)

    # ------------------------------------------------------------------ observer records

    def _observe(
        self, track: ObjectTrack, frame_idx: int, kind: str, certain: Optional[bool], report: StepReport
    ) -> None:
        if self.observer is None:
            return
        tree = track.tree
        created = []
        for c in report.created:
            masks = None if c.node in report.released else tree.payload(c.node).pred_masks
            created.append(CreatedNode(c.node, c.parent, c.candidate, c.iou, c.obj_logit, masks))
        self.observer(self._step_record(track, frame_idx, kind, certain, tuple(created), report))

    def _step_record(
        self,
        track: ObjectTrack,
        frame_idx: Optional[int],
        kind: str,
        certain: Optional[bool],
        created: tuple[CreatedNode, ...],
        report: StepReport,
    ) -> PathwayStep:
        tree = track.tree
        started = tree.started
        nodes = tree.pathway_nodes
        records = [tree.record(n) for n in nodes] if started else []
        return PathwayStep(
            obj_id=self.state["obj_idx_to_id"][track.obj_idx],
            frame_idx=frame_idx,
            kind=kind,
            certain=certain,
            pathway_nodes=nodes,
            scores=tuple(float(s) for s in tree.scores) if started else (),
            ious=tuple(r.iou for r in records),
            obj_logits=tuple(r.obj_logit for r in records),
            best_pathway=tree.best_pathway() if started else None,
            created=created,
            committed_frames=tuple(self.timeline.frame(c.step) for c in report.committed),
            forced_frame=None if report.forced_step is None else self.timeline.frame(report.forced_step),
            stored_nodes=tree.num_stored_nodes,
        )
