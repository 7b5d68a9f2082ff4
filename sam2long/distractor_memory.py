"""DAM4SAM's memory for the pathways of one object (the ``dam4sam`` memory rule of the tree tracker).

Each pathway head carries a :class:`PathwayDistractors` (its DRM frames, object areas and last addition),
copied as pathways branch, so a tree keeps one distractor memory per pathway. :class:`DistractorMemory`
builds a pathway's memory item (:meth:`item`) and, once the frame's candidates are chosen and encoded,
decides which new nodes join their pathway's DRM (:meth:`remember`); the rules themselves are in
:mod:`sam2long.distractor`. Tracking is forward, as the official online tracker's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Optional

from torch import Tensor

from sam2.engine import NewMemories
from sam2.modeling.memory import ItemMemory, PointerMemory, SpatialMemory
from sam2.tracker import PropagationRun
from sam2long.distractor import (
    DistractorConfig,
    SizeHistory,
    memory_layout,
    plan_ram,
    select_drm,
    should_add,
)
from sam2long.memory_policy import FrameRecord
from sam2long.tree import Created, PathwayTree

# DRM entries a pathway keeps: the attended ones are the anchor and the newest before the adjacent
# frame (up to ``max_frames``); one more covers the adjacent frame (read as RAM) and recent pointers.
_KEEP_EXTRA = 1


@dataclass(frozen=True)
class DRMEntry:
    """A tracked frame added to a pathway's DRM: its memory re-encoded as a prompted frame's."""

    frame: int
    maskmem_features: Tensor
    obj_ptr: Tensor
    visible: bool


@dataclass(frozen=True)
class PathwayDistractors:
    sizes: SizeHistory = field(default_factory=SizeHistory)
    last_added: Optional[int] = None
    drm: tuple[DRMEntry, ...] = ()


class DistractorMemory:
    """The distractor-aware memory of one object's pathways during one propagation."""

    def __init__(self, run: PropagationRun, obj_idx: int, config: DistractorConfig) -> None:
        if run.timeline.reverse:
            raise ValueError(
                "the dam4sam memory rule tracks forward only (as the official online tracker); "
                "propagate forward (reverse=False / --direction forward)"
            )
        self.run = run
        self.obj_idx = obj_idx
        self.config = config
        self.states: dict[int, PathwayDistractors] = {}  # per pathway head node
        self.drm_nodes: set[int] = set()  # nodes whose frame joined their pathway's DRM
        self.notes: dict[int, dict] = {}  # per head node, for the observer
        self.row_states: list[PathwayDistractors] = []
        self._prompt_visible: dict[int, bool] = {}

    # ------------------------------------------------------------------ history the tree must keep

    def retention(self, num_maskmem: int, max_ptrs: int) -> list[tuple[int, Optional[Callable[[FrameRecord], bool]]]]:
        """Committed history that keeps :meth:`item` exact: the recent frames (adjacent frame and
        pointers), the latest visible tracked frame, and the visible tracked frames on the RAM grid."""
        frame = self.run.timeline.frame
        stride = self.config.stride

        def tracked_visible(record: FrameRecord) -> bool:
            return record.visible and record.node not in self.drm_nodes

        return [
            (max_ptrs, None),
            (1, tracked_visible),
            (num_maskmem, lambda r: tracked_visible(r) and frame(r.step) % stride == 0),
        ]

    # ------------------------------------------------------------------ memory of a row

    def begin_rows(self, heads: list[Optional[int]]) -> None:
        """The rows of this frame start from these pathway head nodes (None: not started)."""
        self.row_states = [self.states.get(h, PathwayDistractors()) if h is not None else PathwayDistractors() for h in heads]

    def item(self, tree: PathwayTree, pathway: Optional[int], head: Optional[int], step: int) -> ItemMemory:
        """DAM4SAM's memory of one pathway at ``step``: selected DRM frames, then the RAM frames."""
        run, model = self.run, self.run.model
        frame = run.timeline.frame(step)
        prompts = run.session.objects[self.obj_idx].cond_outputs
        state = self.states.get(head, PathwayDistractors()) if head is not None else PathwayDistractors()
        drm = {entry.frame: entry for entry in state.drm}
        anchor = min(prompts)
        selected = select_drm(frame, sorted(set(prompts) | set(drm)), anchor, self.config.max_frames)
        records = {} if pathway is None else {run.timeline.frame(r.step): r for r in tree.history(pathway)}

        def tracked_visible(index: int) -> bool:
            record = records.get(index)
            return record is not None and record.visible and record.node not in self.drm_nodes

        def cond_visible(index: int) -> bool:
            if index in prompts:
                return self._visible_prompt(index)
            return drm[index].visible

        def adjacent_visible(index: int) -> bool:
            return cond_visible(index) if index in prompts or index in drm else tracked_visible(index)

        slots = model.num_maskmem - len(selected)
        ram, positions = plan_ram(frame, slots, self.config.stride, tracked_visible, adjacent_visible, set(selected))
        pos_enc = model.memory_pos_enc(run.session)

        def spatial(index: int, row: int) -> SpatialMemory:
            if index in prompts:
                return SpatialMemory(prompts[index]["maskmem_features"], prompts[index]["maskmem_pos_enc"][-1], row)
            if index in drm:
                return SpatialMemory(drm[index].maskmem_features, pos_enc, row)
            return SpatialMemory(tree.payload(records[index].node).maskmem_features, pos_enc, row)

        entries = []
        for kind, which, row in memory_layout(len(selected), positions, [f is not None for f in ram]):
            entries.append(spatial(selected[which] if kind == 0 else ram[which], row))

        def pointer(index: int) -> Tensor:
            if index in prompts:
                return prompts[index]["obj_ptr"]
            if index in drm:
                return drm[index].obj_ptr
            return tree.payload(records[index].node).obj_ptr

        pointers: list[PointerMemory] = []
        budget = min(frame - anchor + 1, model.max_obj_ptrs_in_encoder)  # frames seen so far, online
        if model.use_obj_ptrs_in_encoder:
            past = [t for t in selected if t <= frame] if model.only_obj_ptrs_in_the_past_for_eval else selected
            pointers = [PointerMemory(pointer(t), abs(frame - t)) for t in past]
            for distance in range(1, budget):
                index = frame - distance
                if index < 0:
                    break
                if index in prompts or index in drm:
                    shown = index not in selected and cond_visible(index)
                else:
                    shown = tracked_visible(index)
                if shown:
                    pointers.append(PointerMemory(pointer(index), distance))
        return ItemMemory(spatial=entries, pointers=pointers, pointer_span=budget - 1)

    def _visible_prompt(self, frame: int) -> bool:
        if frame not in self._prompt_visible:
            masks = self.run.session.objects[self.obj_idx].cond_outputs[frame]["pred_masks"]
            self._prompt_visible[frame] = bool((masks > 0).any())
        return self._prompt_visible[frame]

    # ------------------------------------------------------------------ additions

    def remember(
        self,
        tree: PathwayTree,
        step: int,
        created: list[Created],
        rows: list[int],
        memories: list[NewMemories],
        candidate_masks: Tensor,
    ) -> None:
        """Carry each new node's pathway state over and decide whether its frame joins the DRM."""
        run, model, config = self.run, self.run.model, self.config
        frame = run.timeline.frame(step)
        session = run.session
        for c, row, memory in zip(created, rows, memories):
            parent = self.row_states[row]
            low_res = model.postprocess_masks(memory.pred_masks)
            chosen = model.video_res_masks(session, low_res)[0, 0] > 0
            area = int(chosen.sum())  # the one number every frame needs on the host
            sizes = parent.sizes.add(area, config)
            ratio = sizes.ratio(area)
            since = None if parent.last_added is None else frame - parent.last_added

            def masks(row: int = row, candidate: int = c.candidate, chosen: Tensor = chosen) -> tuple:
                others = [k for k in range(candidate_masks.size(1)) if k != candidate]
                video = model.video_res_masks(session, candidate_masks[row, others].unsqueeze(1))
                return chosen.cpu().numpy(), list((video[:, 0] > 0).cpu().numpy())

            addition = should_add(config, area, masks, c.iou, ratio, since)
            state = replace(parent, sizes=sizes)
            if addition.added:
                features = model.encode_mask_memory(session, frame, low_res, memory.object_score_logits)
                visible = bool(tree.record(c.node).visible)
                entry = DRMEntry(frame, features, memory.obj_ptr, visible)
                keep = config.max_frames + _KEEP_EXTRA
                state = replace(state, last_added=frame, drm=(*parent.drm, entry)[-keep:])
                self.drm_nodes.add(c.node)
            self.states[c.node] = state
            self.notes[c.node] = {
                "added": addition.added,
                "size_ratio": addition.size_ratio,
                "box_ious": list(addition.box_ious),
                "drm_frames": [e.frame for e in state.drm],
            }
        heads = set(tree.pathway_nodes)
        self.states = {n: s for n, s in self.states.items() if n in heads}
        self.notes = {n: s for n, s in self.notes.items() if n in heads}

    def extras(self, tree: PathwayTree) -> list[Optional[dict]]:
        return [self.notes.get(n) for n in tree.pathway_nodes]
