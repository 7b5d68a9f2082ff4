"""SAM2Long video predictor: SAM 2 propagation with a per-object tree of memory pathways.

Prompts, sessions and outputs are those of :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor`;
only :meth:`SAM2LongVideoPredictor.propagate_in_video` changes. Per frame it

1. collects every live (object, distinct pathway) item and assembles their memories into one padded
   batch (:mod:`sam2long.memory_batch`, memories chosen by :mod:`sam2long.memory_policy`),
2. runs memory attention and the mask decoder once on that batch, giving 3 candidates per item,
3. lets each object's :class:`~sam2long.tree.PathwayTree` pick its next ``P`` pathways,
4. runs the memory encoder once on all newly chosen candidates,
5. yields every frame on which all pathways of all objects agree (exactly the end-of-video answer).

Before an object's first conditioning frame (objects prompted on a later frame) and on the frame right
after each conditioning frame, the object is tracked greedily (one pathway, SAM 2's best-IoU choice).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from sam2.modeling.sam2_utils import select_closest_cond_frames
from sam2.sam2_video_predictor import COND, NON_COND, InferenceState, SAM2VideoPredictor
from sam2long.config import SAM2LongConfig
from sam2long.memory_batch import ItemMemory, PointerMemory, SpatialMemory, assemble_memory_batch
from sam2long.memory_policy import COND_FRAME_SCORE, modulation_weights, plan_memory
from sam2long.tree import PathwayTree, StepReport, build_tree


@dataclass
class _NodeData:
    """What a tree node needs for memory and output: its candidate's memory, pointer and mask."""

    maskmem: Tensor  # [1, C_mem, h, w] in the session's storage dtype/device
    obj_ptr: Tensor  # [1, C]
    pred_masks: Tensor  # [1, 1, 4h, 4w] low-res logits
    object_score_logits: Tensor  # [1, 1]


@dataclass
class _ObjectTrack:
    """Propagation state of one object (lives for one ``propagate_in_video`` call)."""

    obj_idx: int
    tree: PathwayTree
    nodes: dict[int, _NodeData] = field(default_factory=dict)
    last_cond_step: Optional[int] = None  # processing step of the latest conditioning frame seen
    after_cond: bool = False  # the next tracked frame is the unbranched one after a conditioning frame
    outputs: dict[int, Tensor] = field(default_factory=dict)  # committed, not yet yielded: step -> logits


@dataclass
class _Item:
    """One row of the per-frame batch: an object's distinct pathway node (or its single track)."""

    track: _ObjectTrack
    pathway: Optional[int]  # a pathway sitting on this item's node; None before the tree starts
    branching: bool


class SAM2LongVideoPredictor(SAM2VideoPredictor):
    """:class:`SAM2VideoPredictor` whose propagation keeps ``P`` memory pathways per object.

    Args:
        sam2long: the tree settings (:class:`~sam2long.config.SAM2LongConfig`; default: the
            ``official`` preset, P=3, iou_threshold=0.1, uncertainty=2, modulation (0.95, 1.05)).
        store_outputs: keep the final (best-path) outputs of tracked frames in the session, as SAM 2
            does, so prompts added after propagation see them as memory. ``False`` keeps memory use
            flat in the video length (outputs are only yielded).
        **kwargs: :class:`SAM2VideoPredictor` / ``SAM2Base`` arguments.
    """

    def __init__(
        self, sam2long: Optional[SAM2LongConfig] = None, store_outputs: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.sam2long = sam2long if sam2long is not None else SAM2LongConfig()
        self.store_outputs = store_outputs

    # ------------------------------------------------------------------ propagation

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: Optional[int] = None,
        max_frame_num_to_track: Optional[int] = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[Any], Tensor]]:
        """Track all objects with the memory tree, yielding ``(frame_idx, obj_ids, video_res_masks)``.

        Frames come out in processing order, each as soon as its answer is final for every object
        (with ``max_lag`` unset, identical to choosing the best pathway after the last frame).
        """
        if self.memory_temporal_stride_for_eval != 1:
            raise NotImplementedError("SAM2Long needs memory_temporal_stride_for_eval == 1")
        self.propagate_in_video_preflight(inference_state)
        obj_ids = inference_state["obj_ids"]
        order = self._processing_order(inference_state, start_frame_idx, max_frame_num_to_track, reverse)
        num_frames = inference_state["num_frames"]
        tracks = [
            _ObjectTrack(
                obj_idx,
                build_tree(
                    self.sam2long,
                    num_maskmem=self.num_maskmem,
                    max_obj_ptrs_in_encoder=self.max_obj_ptrs_in_encoder,
                    num_frames=num_frames,
                ),
            )
            for obj_idx in range(self._get_obj_num(inference_state))
        ]
        sign = -1 if reverse else 1
        pending: deque[int] = deque()
        for frame_idx in tqdm(order, desc="propagate in video (SAM2Long)"):
            step = sign * frame_idx
            pending.append(step)
            self._tree_step(inference_state, tracks, frame_idx, step, reverse)
            yield from self._emit_ready(inference_state, tracks, pending, obj_ids, sign)
        for track in tracks:
            if track.tree.started:
                self._apply_report(inference_state, track, track.tree.finish(), sign, reverse)
        yield from self._emit_ready(inference_state, tracks, pending, obj_ids, sign)

    def _emit_ready(
        self,
        inference_state: InferenceState,
        tracks: list[_ObjectTrack],
        pending: deque[int],
        obj_ids: list[Any],
        sign: int,
    ) -> Iterator[tuple[int, list[Any], Tensor]]:
        """Yield the oldest pending frames whose output is final for every object."""
        while pending and all(pending[0] in track.outputs for track in tracks):
            step = pending.popleft()
            device = inference_state["device"]
            low_res = torch.cat([track.outputs.pop(step).to(device) for track in tracks], dim=0)
            _, video_res_masks = self._get_orig_video_res_output(inference_state, low_res)
            yield sign * step, obj_ids, video_res_masks

    # ------------------------------------------------------------------ one frame

    def _tree_step(
        self,
        inference_state: InferenceState,
        tracks: list[_ObjectTrack],
        frame_idx: int,
        step: int,
        reverse: bool,
    ) -> None:
        """Advance every object by one frame (batched over objects and pathways)."""
        sign = -1 if reverse else 1
        items: list[_Item] = []
        for track in tracks:
            cond_out = inference_state["output_dict_per_obj"][track.obj_idx][COND].get(frame_idx)
            if cond_out is not None:
                self._enter_cond_frame(inference_state, track, cond_out, frame_idx, step, reverse)
                continue
            tree = track.tree
            branching = tree.started and not track.after_cond and track.last_cond_step is not None
            if not tree.started or track.after_cond:
                items.append(_Item(track, 0 if tree.started else None, branching=False))
                continue
            nodes, inverse = tree.unique_pathways()
            for u in range(len(nodes)):
                items.append(_Item(track, int((inverse == u).nonzero()[0]), branching=branching))
        if not items:
            return

        decoded = self._decode_items(inference_state, items, frame_idx, step, reverse)
        low_res, high_res, ious, tokens, obj_scores = decoded

        rows_of: dict[int, list[int]] = {}
        for row, item in enumerate(items):
            rows_of.setdefault(id(item.track), []).append(row)
        encode: list[tuple[_ObjectTrack, int, int, int]] = []  # (track, node, item row, candidate)
        reports: list[tuple[_ObjectTrack, StepReport]] = []
        for track in {id(it.track): it.track for it in items}.values():
            rows = rows_of[id(track)]
            report, chosen = self._advance_tree(track, rows, items[rows[0]].branching, step, ious, obj_scores)
            encode.extend((track, node, row, k) for node, row, k in chosen)
            reports.append((track, report))

        self._encode_nodes(inference_state, frame_idx, encode, low_res, high_res, tokens, obj_scores)
        for track, report in reports:
            self._apply_report(inference_state, track, report, sign, reverse)

    def _advance_tree(
        self,
        track: _ObjectTrack,
        rows: list[int],
        branching: bool,
        step: int,
        ious: Tensor,
        obj_scores: Tensor,
    ) -> tuple[StepReport, list[tuple[int, int, int]]]:
        """Move one object's tree to this frame given its batch rows' candidates.

        Returns the tree's report and ``(node, batch row, candidate)`` for every node to encode.
        Unbranched frames (first frame, the frame after a prompt, before the first prompt) take
        SAM 2's best-IoU candidate; otherwise the tree selects among all pathways' candidates.
        """
        tree = track.tree
        if not branching:
            row = rows[0]
            best = int(torch.argmax(ious[row]))
            iou, obj = float(ious[row, best]), float(obj_scores[row, 0])
            if not tree.started:
                report = tree.start(step, iou, obj, best)
            elif track.after_cond:
                report = tree.restart(step, iou, obj, best)
            else:  # before the object's first prompt: every pathway follows the greedy choice
                P = tree.num_pathways
                report = tree.advance(step, [0] * P, [best] * P, [0.0] * P, ious[[row] * P], obj_scores[[row] * P, 0])
            track.after_cond = False
            return report, [(node, row, best) for node, _, _ in report.created]
        _, inverse = tree.unique_pathways()
        pathway_rows = torch.tensor(rows)[inverse]
        report = tree.branch(
            step, ious[pathway_rows], obj_scores[pathway_rows, 0], self.sam2long.uncertainty, self.sam2long.eps
        )
        return report, [(node, int(pathway_rows[p]), k) for node, p, k in report.created]

    def _enter_cond_frame(
        self,
        inference_state: InferenceState,
        track: _ObjectTrack,
        cond_out: dict[str, Any],
        frame_idx: int,
        step: int,
        reverse: bool,
    ) -> None:
        """A prompted frame: collapse the object's pathways and output its prompted mask."""
        if track.tree.started:
            self._apply_report(inference_state, track, track.tree.collapse(), -1 if reverse else 1, reverse)
        track.last_cond_step = step
        track.after_cond = True
        track.outputs[step] = cond_out["pred_masks"]
        inference_state["frames_tracked_per_obj"][track.obj_idx][frame_idx] = {"reverse": reverse}

    def _decode_items(
        self,
        inference_state: InferenceState,
        items: list[_Item],
        frame_idx: int,
        step: int,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Memory attention + mask decoder for all items at once (3 candidates each)."""
        batch = len(items)
        _, _, vision_feats, vision_pos, feat_sizes = self._get_image_feature(inference_state, frame_idx, batch)
        curr = vision_feats[-1]
        memories = [self._item_memory(inference_state, item, frame_idx, step, reverse) for item in items]
        pos_enc = inference_state["constants"]["maskmem_pos_enc"][-1][0]
        max_ptrs = min(inference_state["num_frames"], self.max_obj_ptrs_in_encoder)
        mem = assemble_memory_batch(self, memories, pos_enc, max_ptrs, curr.dtype)
        fused = self.memory_attention(
            curr=vision_feats[-1:],
            curr_pos=vision_pos[-1:],
            memory=mem.memory,
            memory_pos=mem.memory_pos,
            num_obj_ptr_tokens=mem.num_obj_ptr_tokens,
            memory_key_scale=mem.key_scale,
            memory_key_mask=mem.key_mask,
        )
        height, width = feat_sizes[-1]
        pix_feat = fused.permute(1, 2, 0).view(batch, self.hidden_dim, height, width)
        return self._decode_masks(
            pix_feat,
            high_res_features=self._high_res_features(vision_feats, feat_sizes),
            multimask_output=self._use_multimask(is_init_cond_frame=False, point_inputs=None),
        )

    def _item_memory(
        self, inference_state: InferenceState, item: _Item, frame_idx: int, step: int, reverse: bool
    ) -> ItemMemory:
        """Conditioning frames + the pathway's selected history, with modulation weights."""
        track = item.track
        cond_outputs = inference_state["output_dict_per_obj"][track.obj_idx][COND]
        selected, _ = select_closest_cond_frames(frame_idx, cond_outputs, self.max_cond_frames_in_attn)
        cond_spatial = [out["maskmem_features"][0] for out in selected.values()]
        cond_ptrs = []
        if self.use_obj_ptrs_in_encoder:
            cond_ptrs = [(d, ptr[0]) for d, ptr in self._cond_frame_pointers(frame_idx, selected, reverse)]

        history = [] if item.pathway is None else track.tree.history(item.pathway)
        if self.sam2long.memory_selection and track.last_cond_step is not None:
            history = [r for r in history if r.frame > track.last_cond_step]
        plan = plan_memory(
            history,
            step,
            num_maskmem=self.num_maskmem,
            max_obj_ptrs_in_encoder=self.max_obj_ptrs_in_encoder,
            num_frames=inference_state["num_frames"],
            iou_threshold=self.sam2long.iou_threshold,
            selection=self.sam2long.memory_selection,
        )
        plan_ptrs = plan.pointers if self.use_obj_ptrs_in_encoder else ()

        frame_scores = [COND_FRAME_SCORE] * len(cond_spatial) + [r.obj_logit for r in plan.spatial]
        ptr_scores = [COND_FRAME_SCORE] * len(cond_ptrs) + [r.obj_logit for r in plan_ptrs]
        frame_w, ptr_w = modulation_weights(
            torch.tensor(frame_scores, dtype=torch.float32),
            torch.tensor(ptr_scores, dtype=torch.float32) if ptr_scores else None,
            self.sam2long.memory_modulation,
        )
        frame_w = [1.0] * len(frame_scores) if frame_w is None else frame_w.tolist()
        ptr_w = [1.0] * len(ptr_scores) if ptr_w is None else ptr_w.tolist()

        spatial = [SpatialMemory(f, self.num_maskmem - 1, w) for f, w in zip(cond_spatial, frame_w)]
        spatial += [
            SpatialMemory(track.nodes[r.node].maskmem[0], self.num_maskmem - r.position - 1, w)
            for r, w in zip(plan.spatial, frame_w[len(cond_spatial) :])
        ]
        pointers = [PointerMemory(p, d, w) for (d, p), w in zip(cond_ptrs, ptr_w)]
        pointers += [
            PointerMemory(track.nodes[r.node].obj_ptr[0], r.position, w)
            for r, w in zip(plan_ptrs, ptr_w[len(cond_ptrs) :])
        ]
        return ItemMemory(spatial=spatial, pointers=pointers)

    def _encode_nodes(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        encode: list[tuple[_ObjectTrack, int, int, int]],
        low_res: Tensor,
        high_res: Tensor,
        tokens: Tensor,
        obj_scores: Tensor,
    ) -> None:
        """Memory encoder (one batch) and object pointers for every newly created node."""
        if not encode:
            return
        rows = torch.tensor([row for _, _, row, _ in encode], device=high_res.device)
        cands = torch.tensor([k for _, _, _, k in encode], device=high_res.device)
        token_cands = cands if tokens.size(1) > 1 else torch.zeros_like(cands)
        scores = obj_scores[rows]
        obj_ptr = self._obj_ptr_from_token(tokens[rows, token_cands], scores)
        masks_high = high_res[rows, cands].unsqueeze(1)
        _, _, vision_feats, _, feat_sizes = self._get_image_feature(inference_state, frame_idx, len(encode))
        maskmem, _ = self._encode_new_memory(
            current_vision_feats=vision_feats,
            feat_sizes=feat_sizes,
            pred_masks_high_res=masks_high,
            object_score_logits=scores,
            is_mask_from_pts=False,
        )
        maskmem = self._store_memory(inference_state, maskmem)
        low = low_res[rows, cands].unsqueeze(1)
        for i, (track, node, _, _) in enumerate(encode):
            track.nodes[node] = _NodeData(
                maskmem=maskmem[i : i + 1],
                obj_ptr=obj_ptr[i : i + 1],
                pred_masks=low[i : i + 1],
                object_score_logits=scores[i : i + 1],
            )

    def _apply_report(
        self, inference_state: InferenceState, track: _ObjectTrack, report: StepReport, sign: int, reverse: bool
    ) -> None:
        """Record committed frames as outputs (and in the session), then free released nodes."""
        obj_output_dict = inference_state["output_dict_per_obj"][track.obj_idx]
        for step, node in report.committed:
            data = track.nodes[node]
            pred_masks = self._postprocess_masks(data.pred_masks)
            track.outputs[step] = pred_masks
            frame_idx = sign * step
            inference_state["frames_tracked_per_obj"][track.obj_idx][frame_idx] = {"reverse": reverse}
            if self.store_outputs:
                pos_enc = inference_state["constants"]["maskmem_pos_enc"]
                obj_output_dict[NON_COND][frame_idx] = {
                    "maskmem_features": data.maskmem,
                    "maskmem_pos_enc": pos_enc,
                    "pred_masks": pred_masks.to(inference_state["storage_device"], non_blocking=True),
                    "obj_ptr": data.obj_ptr,
                    "object_score_logits": data.object_score_logits,
                }
        for node in report.released:
            track.nodes.pop(node, None)
