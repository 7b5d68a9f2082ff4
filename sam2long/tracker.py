"""SAM2Long's tracker: a per-object tree of ``P`` memory pathways on the tracker interface.

Per object and tracked frame (:mod:`sam2.tracker` describes the calls):

1. :meth:`memories`: every distinct pathway node is a row; its memory is the object's conditioning memory
   plus the frames its pathway's policy selects (:mod:`sam2long.memory_policy`), with occlusion-rank key
   weights;
2. :meth:`choose`: the object's :class:`~sam2long.tree.PathwayTree` picks its next ``P`` pathways among
   all rows' candidates (or SAM 2's best-IoU candidate on unbranched frames);
3. :meth:`remember`: the new nodes' memories become their payloads; every step on which all pathways
   agree is final (exactly the end-of-video answer), or is forced after ``max_lag`` steps.

Before an object's first conditioning frame (objects prompted on a later frame) and on the frame right
after each conditioning frame, the object is tracked greedily (one pathway). Frames are addressed by
processing *step* (:class:`~sam2.engine.Timeline`), so the tree and the memory policy never see the
tracking direction.
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from typing import Optional

import torch
from torch import Tensor

from sam2.engine import NewMemories
from sam2.modeling.memory import ItemMemory, PointerMemory, SpatialMemory, tpos_enc_row
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.tracker import (
    CreatedNode,
    FinalOutput,
    ObjectTracker,
    Outcome,
    Pick,
    PropagationRun,
    Tracker,
    TrackStep,
)
from sam2long.config import SAM2LongConfig
from sam2long.distractor import DistractorConfig
from sam2long.distractor_memory import DistractorMemory
from sam2long.memory_policy import memory_scores, modulation_weights, plan_memory
from sam2long.motion import MotionScores, MotionState, motion_scores
from sam2long.tree import Created, PathwayTree, StepReport, build_tree, is_certain


class RowMode(Enum):
    """How an object's rows are advanced on a frame."""

    ROOT = "root"  # first tracked frame of the tree, or the frame after a conditioning frame
    GREEDY = "greedy"  # before the object's first conditioning frame: every pathway takes SAM 2's choice
    BRANCH = "branch"  # the tree selects among all pathways' candidates


class SAM2LongTracker(Tracker):
    """SAM2Long's memory tree (see the module docstring).

    Args:
        config: the tree settings (default: the ``official`` preset, P=3, iou_threshold=0.1,
            uncertainty=2, modulation (0.95, 1.05)).
        store_outputs: keep the final (best-path) outputs of tracked frames in the session, as SAM 2
            does, so prompts added after propagation see them as memory. ``False`` keeps memory use flat
            in the video length (outputs are only yielded).
        batch_objects: run all objects' pathways in one model pass per frame (fastest). ``False`` runs
            one pass per object, so an object's results never depend on which other objects are tracked,
            bit for bit (batched passes agree with them up to float rounding).
    """

    label = " (SAM2Long)"

    def __init__(
        self, config: Optional[SAM2LongConfig] = None, store_outputs: bool = True, batch_objects: bool = True
    ) -> None:
        self.config = SAM2LongConfig() if config is None else config
        if not isinstance(self.config, SAM2LongConfig):
            raise TypeError(f"config must be a SAM2LongConfig, got {type(self.config).__name__}")
        self.store_outputs = store_outputs
        self.batch_objects = batch_objects

    @property
    def candidate_details(self) -> frozenset[str]:
        """The motion term scores candidates by their boxes; the distractor memory reads the candidates'
        masks and where the object is visible."""
        wanted = {"boxes"} if self.config.motion_weight is not None else set()
        if self.config.memory_rule == "dam4sam":
            wanted |= {"masks", "visible"}
        return frozenset(wanted)

    @property
    def box_prompts_as_masks(self) -> bool:
        """DAM4SAM starts from SAM's mask for a box."""
        return self.config.memory_selection and self.config.memory_rule == "dam4sam"

    def model_overrides(self) -> list[str]:
        """SAMURAI's object threshold is the model's ``min_obj_score_logits``."""
        if self.config.object_threshold == 0.0:
            return []
        return [f"++model.min_obj_score_logits={self.config.object_threshold}"]

    def check_model(self, model: SAM2VideoPredictor) -> None:
        """Refuse the options the tree cannot honour, naming the option."""
        if model.min_obj_score_logits != self.config.object_threshold:
            raise ValueError(
                f"object_threshold={self.config.object_threshold} needs the model's min_obj_score_logits "
                f"to match (it is {model.min_obj_score_logits}); build with the hydra override "
                f"++model.min_obj_score_logits={self.config.object_threshold} (the builders add it)"
            )
        if model.memory_temporal_stride_for_eval != 1:
            raise ValueError(
                f"SAM2Long does not support memory_temporal_stride_for_eval={model.memory_temporal_stride_for_eval}: "
                "its pathways choose memory frames by reliability, not on a fixed stride; use 1"
            )
        if model.non_overlap_masks_for_mem_enc:
            raise ValueError(
                "SAM2Long does not support non_overlap_masks_for_mem_enc=True: memories are encoded per "
                "pathway, before the objects' final masks are known; use non_overlap_masks for the outputs"
            )
        if model.num_maskmem < 2:
            raise ValueError(
                f"SAM2Long needs num_maskmem >= 2 (a memory of past frames), got {model.num_maskmem}"
            )

    def track_object(self, run: PropagationRun, obj_idx: int) -> ObjectTracker:
        model = run.model
        if self.config.memory_selection and self.config.memory_rule == "dam4sam":
            distractor = DistractorMemory(run, obj_idx, DistractorConfig())
            rules = distractor.retention(model.num_maskmem, model.max_obj_ptrs_in_encoder)
            tree = PathwayTree(self.config.num_pathways, max_lag=self.config.max_lag, history_rules=rules)
            return TreeObject(run, obj_idx, self.config, tree, distractor)
        tree = build_tree(
            self.config,
            num_maskmem=model.num_maskmem,
            max_obj_ptrs_in_encoder=model.max_obj_ptrs_in_encoder,
            num_frames=run.session.num_frames,
        )
        return TreeObject(run, obj_idx, self.config, tree)


def _surviving(report: StepReport) -> list[Created]:
    """Nodes created by an update that are still in the tree (``max_lag`` may prune new ones at once)."""
    released = set(report.released)
    return [c for c in report.created if c.node not in released]


class TreeObject(ObjectTracker):
    """One object's pathway tree during one propagation."""

    def __init__(
        self,
        run: PropagationRun,
        obj_idx: int,
        config: SAM2LongConfig,
        tree: PathwayTree,
        distractor: Optional[DistractorMemory] = None,
    ) -> None:
        self.run = run
        self.obj_idx = obj_idx
        self.config = config
        self.tree: PathwayTree[NewMemories] = tree
        self.last_cond_step: Optional[int] = None  # step of the latest conditioning frame seen
        self.after_cond = False  # the next tracked frame is the unbranched one after a conditioning frame
        self.cleared_steps: set[int] = set()  # memories dropped by clear_non_cond_mem_around_input
        # the frame in progress: its mode, the rows' pathways, and the update waiting for its memories
        self.mode = RowMode.ROOT
        self.row_pathways: list[Optional[int]] = []
        self.report = StepReport()
        self.certain: Optional[bool] = None
        # SAMURAI's motion term: the Kalman state of each pathway node, and this frame's row scores
        self.motion = config.motion()
        self.motion_states: dict[int, MotionState] = {}
        self.motion_notes: dict[int, dict] = {}  # per pathway node, for the observer
        self.row_states: list[MotionState] = []
        self.row_motion: list[MotionScores] = []
        self.boxes: Optional[Tensor] = None
        # DAM4SAM's distractor-aware memory (the dam4sam memory rule): the rows' candidate masks and
        # which row each new node came from
        self.distractor = distractor
        self.candidate_masks: Optional[Tensor] = None
        self.created_rows: list[int] = []

    def current_mode(self) -> RowMode:
        if not self.tree.started or self.after_cond:
            return RowMode.ROOT
        if self.last_cond_step is None:
            return RowMode.GREEDY
        return RowMode.BRANCH

    # ------------------------------------------------------------------ the interface

    def prompted(self, step: int) -> Outcome:
        """A prompted frame: the pathways collapse onto the best one (its steps become final)."""
        final = self._final(self.tree.collapse()) if self.tree.started else []
        self.last_cond_step = step
        self.after_cond = True
        model = self.run.model
        if model.clear_non_cond_mem_around_input:
            # As SAM 2: memories of the frames just before a prompt may show the object before its
            # correction; the loop drops them from the session, the pathways stop reading them.
            self.cleared_steps.update(range(step - model.num_maskmem, step))
        return Outcome(final, self._record(step, "prompt", None, StepReport()))

    def absent(self, step: int) -> Optional[TrackStep]:
        return self._record(step, "absent", None, StepReport())

    def memories(self, step: int) -> list[ItemMemory]:
        self.mode = self.current_mode()
        if self.mode is RowMode.BRANCH:
            nodes, inverse = self.tree.unique_pathways()
            self.row_pathways = [int((inverse == u).nonzero()[0]) for u in range(len(nodes))]
        else:
            self.row_pathways = [0 if self.tree.started else None]
        if self.distractor is not None:
            heads = [None if p is None else self.tree.pathway_nodes[p] for p in self.row_pathways]
            self.distractor.begin_rows(heads)
            return [self.distractor.item(self.tree, p, h, step) for p, h in zip(self.row_pathways, heads)]
        return [self._row_memory(pathway, step) for pathway in self.row_pathways]

    def choose(self, step: int, ious: Tensor, obj_logits: Tensor, **details: Tensor) -> list[Pick]:
        """Move the tree to this frame given its rows' candidates; unbranched frames take the best
        candidate of row 0 (SAM 2's best IoU, or SAMURAI's motion-weighted score)."""
        tree = self.tree
        self.certain = None
        boxes, visible = details.get("boxes"), details.get("visible")
        self.boxes, self.candidate_masks = boxes, details.get("masks")
        scores, motion = self._row_scores(ious, boxes)
        if self.mode is not RowMode.BRANCH:
            best = int(torch.argmax(scores[0]))
            iou, obj = float(ious[0, best]), float(obj_logits[0])
            moved = None if motion is None or motion[0, best].isnan() else float(motion[0, best])
            shown = True if visible is None else bool(visible[0, best])
            if not tree.started:
                self.report = tree.start(step, iou, obj, best, moved, shown)
            elif self.mode is RowMode.ROOT:
                self.report = tree.restart(step, iou, obj, best, moved, shown)
            else:
                P = tree.num_pathways
                self.report = tree.advance(
                    step,
                    [0] * P,
                    [best] * P,
                    [0.0] * P,
                    ious[[0] * P],
                    obj_logits[[0] * P],
                    None if motion is None else motion[[0] * P],
                    None if visible is None else visible[[0] * P],
                )
            self.after_cond = False
            surviving = _surviving(self.report)
            self.created_rows = [0] * len(surviving)
            self._advance_motion(surviving, self.created_rows)
            return [Pick(0, best) for _ in surviving]
        _, inverse = tree.unique_pathways()
        pathway_ious, pathway_obj = ious[inverse], obj_logits[inverse]
        self.certain = is_certain(pathway_obj, self.config.uncertainty)
        self.report = tree.branch(
            step,
            pathway_ious,
            pathway_obj,
            self.config.uncertainty,
            self.config.eps,
            None if self.motion is None else scores[inverse],
            None if motion is None else motion[inverse],
            None if visible is None else visible[inverse],
        )
        surviving = _surviving(self.report)
        rows = [int(inverse[c.parent_pathway]) for c in surviving]
        self.created_rows = rows
        self._advance_motion(surviving, rows)
        return [Pick(row, c.candidate) for row, c in zip(rows, surviving)]

    def _row_scores(self, ious: Tensor, boxes: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """What each row's candidates are ranked by (``[rows, K]``) and their motion IoUs (NaN where
        none was measured; None without the motion term)."""
        if self.motion is None:
            return ious, None
        if boxes is None:
            raise ValueError("the motion term needs the candidates' boxes (Tracker.candidate_boxes)")
        self.row_states = [self._row_state(row) for row in range(ious.size(0))]
        self.row_motion = [
            motion_scores(state, self.motion, ious[row], boxes[row]) for row, state in enumerate(self.row_states)
        ]
        scores = torch.stack([m.scores for m in self.row_motion])
        nan = torch.full_like(ious[0], float("nan"))
        motion = torch.stack([nan if m.motion_ious is None else m.motion_ious for m in self.row_motion])
        return scores, motion

    def _row_state(self, row: int) -> MotionState:
        pathway = self.row_pathways[row]
        if pathway is None or not self.tree.started:
            return MotionState()
        return self.motion_states.get(self.tree.pathway_nodes[pathway], MotionState())

    def _advance_motion(self, created: list[Created], rows: list[int]) -> None:
        """Each new node's Kalman state: its row's prediction corrected by the chosen candidate's box."""
        if self.motion is None:
            return
        for c, row in zip(created, rows):
            scored = self.row_motion[row]
            box = self.boxes[row, c.candidate].tolist()
            state = self.row_states[row].after(self.motion, scored.predicted, box, c.iou)
            self.motion_states[c.node] = state
            motion = None if scored.motion_ious is None else float(scored.motion_ious[c.candidate])
            predicted = None if scored.predicted is None else [float(v) for v in scored.predicted.box]
            self.motion_notes[c.node] = {
                "predicted_box": predicted,
                "motion_iou": motion,
                "stable_frames": state.stable_frames,
                "kalman_mean": None if state.kalman is None else [float(v) for v in state.kalman.mean],
            }
        heads = set(self.tree.pathway_nodes)
        self.motion_states = {n: st for n, st in self.motion_states.items() if n in heads}
        self.motion_notes = {n: note for n, note in self.motion_notes.items() if n in heads}

    def remember(self, step: int, memories: list[NewMemories]) -> Outcome:
        surviving = _surviving(self.report)
        for created, memory in zip(surviving, memories):
            self.tree.attach(created.node, memory)
        if self.distractor is not None:
            self.distractor.remember(self.tree, step, surviving, self.created_rows, memories, self.candidate_masks)
        record = self._record(step, self.mode.value, self.certain, self.report)
        return Outcome(self._final(self.report), record)

    def finish(self) -> Outcome:
        """End of the video: a started tree commits its best pathway."""
        if not self.tree.started:
            return Outcome()
        last = self._record(None, "end", None, StepReport())
        report = self.tree.finish()
        if last is not None:
            last = replace(last, committed_frames=self._frames(c.step for c in report.committed))
        return Outcome(self._final(report), last)

    # ------------------------------------------------------------------ helpers

    def _final(self, report: StepReport) -> list[FinalOutput]:
        return [FinalOutput(c.step, self.tree.payload(c.node)) for c in report.committed]

    def _row_memory(self, pathway: Optional[int], step: int) -> ItemMemory:
        """Conditioning frames + the pathway's selected history, with modulation weights."""
        run, model, tree = self.run, self.run.model, self.tree
        frame_idx = run.timeline.frame(step)
        cond = model.conditioning_memory(run.session, self.obj_idx, frame_idx, run.timeline.reverse)

        history = [] if pathway is None else tree.history(pathway)
        if self.config.memory_selection and self.last_cond_step is not None:
            history = [r for r in history if r.step > self.last_cond_step]
        if self.cleared_steps:
            history = [r for r in history if r.step not in self.cleared_steps]
        plan = plan_memory(
            history,
            step,
            num_maskmem=model.num_maskmem,
            max_obj_ptrs_in_encoder=model.max_obj_ptrs_in_encoder,
            num_frames=run.session.num_frames,
            iou_threshold=self.config.iou_threshold,
            selection=self.config.memory_selection,
            rule=self.config.memory_rule,
            motion_threshold=self.config.memory_motion_threshold,
            first_step=self.last_cond_step or 0,
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

        pos_enc = model.memory_pos_enc(run.session)
        spatial = [replace(entry, weight=w) for entry, w in zip(cond.spatial, frame_w)]
        spatial += [
            SpatialMemory(
                tree.payload(ref.node).maskmem_features,
                pos_enc,
                tpos_enc_row(model.num_maskmem, ref.position),
                w,
            )
            for ref, w in zip(plan.spatial, frame_w[len(cond.spatial) :])
        ]
        pointers = [replace(entry, weight=w) for entry, w in zip(cond.pointers, ptr_w)]
        pointers += [
            PointerMemory(tree.payload(ref.node).obj_ptr, ref.position, w)
            for ref, w in zip(plan.pointers, ptr_w[len(cond.pointers) :])
        ]
        return ItemMemory(spatial=spatial, pointers=pointers)

    def _frames(self, steps) -> tuple[int, ...]:
        return tuple(self.run.timeline.frame(s) for s in steps)

    def _record(
        self, step: Optional[int], kind: str, certain: Optional[bool], report: StepReport
    ) -> Optional[TrackStep]:
        """The observer's record of this frame (None when nobody observes)."""
        if not self.run.observing:
            return None
        tree = self.tree
        created = tuple(
            CreatedNode(
                c.node,
                c.parent,
                c.candidate,
                c.iou,
                c.obj_logit,
                None if c.node in report.released else tree.payload(c.node).pred_masks,
            )
            for c in report.created
        )
        started = tree.started
        records = [tree.record(n) for n in tree.pathway_nodes] if started else []
        return TrackStep(
            obj_id=self.run.obj_id(self.obj_idx),
            frame_idx=None if step is None else self.run.timeline.frame(step),
            kind=kind,
            certain=certain,
            pathway_nodes=tree.pathway_nodes,
            scores=tuple(float(s) for s in tree.scores) if started else (),
            ious=tuple(r.iou for r in records),
            obj_logits=tuple(r.obj_logit for r in records),
            best_pathway=tree.best_pathway() if started else None,
            created=created,
            committed_frames=self._frames(c.step for c in report.committed),
            forced_frame=None if report.forced_step is None else self.run.timeline.frame(report.forced_step),
            stored_nodes=tree.num_stored_nodes,
            extras=self._extras(),
        )

    def _extras(self) -> Optional[dict]:
        if not self.tree.started or (self.motion is None and self.distractor is None):
            return None
        extras = {}
        if self.motion is not None:
            extras["motion"] = [self.motion_notes.get(n) for n in self.tree.pathway_nodes]
        if self.distractor is not None:
            extras["distractor"] = self.distractor.extras(self.tree)
        return extras
