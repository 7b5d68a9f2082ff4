"""Interactive video object segmentation with SAM 2.

:class:`SAM2VideoPredictor` drives :class:`~sam2.modeling.sam2_base.SAM2Base` over a video held in a
session (:class:`~sam2.session.InferenceSession`): users add clicks, boxes or masks for objects on some
frames, then propagate them forwards or backwards through the video.

Objects are tracked independently (each has its own memory and outputs) while sharing the image
features of each frame. Per object and frame the session keeps upstream's compact output
(:data:`~sam2.engine.FrameOutput`): ``maskmem_features`` (stored in bfloat16 like upstream and cast back
to the compute dtype when read), ``maskmem_pos_enc``, ``pred_masks`` (low-res logits), ``obj_ptr`` and
``object_score_logits``.

Propagation is the one loop of :mod:`sam2.propagation` driving the predictor's tracker
(:mod:`sam2.tracker`; SAM 2's own by default) over the engine calls
defined here: :meth:`frame_features`, :meth:`object_memory` / :meth:`conditioning_memory`,
:meth:`assemble_memory`, :meth:`decode_candidates`, :meth:`encode_memories`,
:meth:`store_tracked_output`. Prompted frames use :meth:`track_step`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from sam2.engine import Candidates, FrameFeatures, FrameOutput, NewMemories, Timeline
from sam2.modeling.memory import ItemMemory
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base
from sam2.precision import autocast_method
from sam2.prompt_inputs import check_frame_idx, concat_points, mask_prompt, point_prompt
from sam2.propagation import propagate
from sam2.session import InferenceSession
from sam2.tracker import SAM2Tracker, StepObserver, Tracker
from sam2.utils.mask_postprocess import fill_holes_in_mask_scores
from sam2.utils.output_store import DEFAULT_RAM_BUDGET_BYTES, OutputStore
from sam2.utils.video_frames import load_video_frames

#: what ``init_state`` returns (upstream's name)
InferenceState = InferenceSession


class SAM2VideoPredictor(SAM2Base):
    """SAM 2 for videos: per-object prompts on frames, then memory-based propagation."""

    #: dtype of spatial memories kept in the session (upstream's choice: half the memory of fp32;
    #: the rounding is part of the reference numerics, so changing it changes the outputs)
    maskmem_storage_dtype: torch.dtype = torch.bfloat16

    def __init__(
        self,
        fill_hole_area: int = 0,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        tracker: Optional[Tracker] = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            fill_hole_area: fill background holes of at most this many low-res pixels in every
                predicted mask (0 disables the post-processing).
            non_overlap_masks: make the returned masks of different objects disjoint (the
                highest-scoring object wins each pixel).
            clear_non_cond_mem_around_input: when a prompted frame is consolidated or revisited,
                drop the tracked memories of that object within ``num_maskmem`` (strided) frames
                around it, since they may describe the object before its correction.
            add_all_frames_to_correct_as_cond: also treat correction prompts on already-tracked
                frames as conditioning frames (otherwise only initial prompts are).
            tracker: how propagation chooses what each object remembers (:mod:`sam2.tracker`);
                default SAM 2's own (:class:`~sam2.tracker.SAM2Tracker`). It may refuse model settings
                it cannot honour.
            **kwargs: the :class:`SAM2Base` configuration.
        """
        super().__init__(**kwargs)
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.tracker = SAM2Tracker() if tracker is None else tracker
        self.tracker.check_model(self)

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs: Any) -> SAM2VideoPredictor:
        """Build a video predictor from a Hugging Face hub model id (e.g. ``facebook/sam2.1-hiera-tiny``)."""
        from sam2.build_sam import build_sam2_video_predictor_hf

        return build_sam2_video_predictor_hf(model_id, **kwargs)

    # ------------------------------------------------------------------ session

    @torch.inference_mode()
    @autocast_method
    def init_state(
        self,
        video_path: Any,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
        stream_frames: bool = False,
        preload_frames: bool = False,
        output_ram_budget_bytes: Optional[int] = DEFAULT_RAM_BUDGET_BYTES,
        spill_dir: Optional[Union[str, os.PathLike]] = None,
    ) -> InferenceSession:
        """Load a video and start a session on it.

        ``video_path`` is a folder of JPEG/PNG frames, a video file, or in-memory frames (see
        :func:`sam2.utils.video_frames.load_video_frames`). ``offload_video_to_cpu`` keeps the frames in
        CPU memory and ``offload_state_to_cpu`` keeps the stored memories and masks there, both
        trading a little speed for accelerator memory. By default frames are decoded when first
        used into a small ring with read-ahead in the direction of playback (memory constant in the
        video length); ``async_loading_frames`` (upstream) and ``stream_frames`` are accepted and mean
        the same. ``preload_frames=True`` decodes every frame up front into one tensor (upstream's
        default; about 12.6 MB per frame at 1024 px).

        Tracked outputs live in an :class:`~sam2.utils.output_store.OutputStore`: the most recent
        ones (all that memory attention reads) stay on the compute device up to
        ``output_ram_budget_bytes``, older ones spill to a temporary folder under ``spill_dir``
        (default: the system temp folder) and come back bit for bit when a later interaction needs
        them. ``output_ram_budget_bytes=None`` keeps everything in memory, as upstream does. A tracker
        without ``store_outputs`` keeps none.
        """
        images, video_height, video_width = load_video_frames(
            video_path=video_path,
            image_size=self.image_size,
            offload_video_to_cpu=offload_video_to_cpu,
            async_loading_frames=async_loading_frames,
            compute_device=self.device,
            stream_frames=stream_frames,
            preload_frames=preload_frames,
        )
        store = OutputStore(output_ram_budget_bytes, spill_dir, retain=self.tracker.store_outputs)
        session = InferenceSession(
            images, video_height, video_width, self.device, store, offload_video_to_cpu, offload_state_to_cpu
        )
        # Encode frame 0 right away: it is cached and usually the first frame users prompt.
        self.frame_features(session, frame_idx=0, batch_size=1)
        return session

    # ------------------------------------------------------------------ prompts

    @torch.inference_mode()
    @autocast_method
    def add_new_points_or_box(
        self,
        inference_state: InferenceSession,
        frame_idx: int,
        obj_id: Any,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> tuple[int, list[Any], Tensor]:
        """Add clicks and/or a box for one object on one frame and predict its mask there.

        ``points`` are ``(P, 2)`` xy coordinates in video pixels (or in [0, 1] with
        ``normalize_coords=False``), ``labels`` are 1 (positive) / 0 (negative), and ``box`` is
        ``(x0, y0, x1, y1)``. Unless ``clear_old_points=False``, earlier clicks of the object on
        this frame are replaced. Returns ``(frame_idx, obj_ids, video_res_masks)`` with mask
        logits of all objects on this frame at the video resolution.
        """
        session = inference_state
        check_frame_idx(frame_idx, session.num_frames, session.propagation)
        if box is not None and points is None and self.tracker.box_prompts_as_masks:
            return self.add_new_mask(session, frame_idx, obj_id, self.box_mask(session, frame_idx, box))
        coords, point_labels = point_prompt(
            points,
            labels,
            box,
            clear_old_points,
            normalize_coords,
            (session.video_height, session.video_width),
            self.image_size,
        )
        obj = session.objects[session.add_object(obj_id)]
        old_inputs = None if clear_old_points else obj.point_inputs.get(frame_idx)
        point_inputs = concat_points(old_inputs, coords.to(session.device), point_labels.to(session.device))
        obj.point_inputs[frame_idx] = point_inputs
        obj.mask_inputs.pop(frame_idx, None)
        return self._predict_prompted_frame(session, obj_id, frame_idx, point_inputs, None)

    @torch.inference_mode()
    @autocast_method
    def box_mask(self, inference_state: InferenceSession, frame_idx: int, box: Any) -> Tensor:
        """SAM's single-mask answer for a box ``(x0, y0, x1, y1)`` on one frame, without memory or the
        object-score gate: a boolean ``(H, W)`` mask at the video resolution. Trackers with
        ``box_prompts_as_masks`` (DAM4SAM) start from it instead of the box."""
        session = inference_state
        video_size = (session.video_height, session.video_width)
        coords, labels = point_prompt(None, None, box, True, True, video_size, self.image_size)
        features = self.frame_features(session, frame_idx, 1)
        feats = features.vision_feats[-1]
        if self.directly_add_no_mem_embed:
            feats = feats + self.no_mem_embed
        low_res = self._decode_masks(
            self._to_feature_map(feats, features.feat_sizes[-1]),
            {"point_coords": coords.to(session.device), "point_labels": labels.to(session.device)},
            high_res_features=self._high_res_features(features.vision_feats, features.feat_sizes),
            gate=False,
        )[0]
        masks = F.interpolate(low_res.float(), size=video_size, mode="bilinear", align_corners=False)
        return masks[0, 0] > 0

    def add_new_points(self, *args: Any, **kwargs: Any) -> tuple[int, list[Any], Tensor]:
        """Deprecated alias of :meth:`add_new_points_or_box`."""
        return self.add_new_points_or_box(*args, **kwargs)

    @torch.inference_mode()
    @autocast_method
    def add_new_mask(
        self, inference_state: InferenceSession, frame_idx: int, obj_id: Any, mask: Any
    ) -> tuple[int, list[Any], Tensor]:
        """Give one object's mask (``(H, W)``, any resolution) on one frame as its prompt.

        The mask replaces any clicks of the object on this frame. Returns
        ``(frame_idx, obj_ids, video_res_masks)`` like :meth:`add_new_points_or_box`.
        """
        session = inference_state
        check_frame_idx(frame_idx, session.num_frames, session.propagation)
        video_size = (session.video_height, session.video_width)
        mask_inputs = mask_prompt(mask, video_size, self.image_size, session.device)
        obj = session.objects[session.add_object(obj_id)]
        obj.mask_inputs[frame_idx] = mask_inputs
        obj.point_inputs.pop(frame_idx, None)
        return self._predict_prompted_frame(session, obj_id, frame_idx, None, mask_inputs)

    def _predict_prompted_frame(
        self,
        session: InferenceSession,
        obj_id: Any,
        frame_idx: int,
        point_inputs: Optional[dict[str, Tensor]],
        mask_inputs: Optional[Tensor],
    ) -> tuple[int, list[Any], Tensor]:
        """Predict an object's mask on a frame that just received a prompt.

        A frame the object was never tracked on is an initial conditioning frame (segmented like
        SAM, without memory); on a tracked frame the prompt corrects the tracked mask. The memory
        encoder is deferred to :meth:`propagate_in_video_preflight`, once prompting is done.
        """
        obj = session.objects[session.obj_idx(obj_id)]
        is_init_cond_frame = frame_idx not in obj.frames_tracked
        reverse = False if is_init_cond_frame else obj.frames_tracked[frame_idx]
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        prev_sam_mask_logits = None
        if point_inputs is not None:
            previous = obj.latest_output(frame_idx, is_cond)
            if previous is not None and previous["pred_masks"] is not None:
                logits = previous["pred_masks"].to(session.device, non_blocking=True)
                # Bound the logits so that very confident old predictions stay numerically tame.
                prev_sam_mask_logits = torch.clamp(logits, -32.0, 32.0)
        features = self.frame_features(session, frame_idx, 1)
        out = self.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=features.vision_feats,
            current_vision_pos_embeds=features.vision_pos_embeds,
            feat_sizes=features.feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=obj.output_dict(),
            num_frames=session.num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=False,  # the memory is encoded once prompting is done (preflight)
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        current_out = {
            "maskmem_features": None,
            "maskmem_pos_enc": None,
            "pred_masks": self.postprocess_masks(out["pred_masks"]).to(
                session.storage_device, non_blocking=True
            ),
            # pointers are tiny and read on every frame, so they stay on the compute device
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }
        (obj.temp_cond_outputs if is_cond else obj.temp_tracked_outputs)[frame_idx] = current_out
        return self._frame_output(session, frame_idx, is_cond)

    def _frame_output(
        self, session: InferenceSession, frame_idx: int, is_cond: bool
    ) -> tuple[int, list[Any], Tensor]:
        """``(frame_idx, obj_ids, video_res_masks)`` for all objects on a frame, from the latest outputs."""
        masks = session.latest_masks(frame_idx, is_cond, NO_OBJ_SCORE)
        return frame_idx, session.obj_ids, self.video_res_masks(session, masks)

    def prompt_masks(
        self, inference_state: InferenceSession, obj_id: Any, frame_idx: int
    ) -> Optional[Tensor]:
        """Video-resolution mask logits ``(1, 1, H, W)`` of an object's prompt result on a frame (its
        latest, consolidated or not), or None if the object has no prompt there."""
        session = inference_state
        obj_idx = session.obj_idx(obj_id)
        if obj_idx is None:
            return None
        obj = session.objects[obj_idx]
        out = obj.cond_outputs.get(frame_idx, obj.temp_cond_outputs.get(frame_idx))
        return None if out is None else self.video_res_masks(session, out["pred_masks"])

    # ------------------------------------------------------------------ outputs

    def video_res_masks(self, inference_state: InferenceSession, any_res_masks: Tensor) -> Tensor:
        """Mask logits ``(num_obj, 1, h, w)`` at any resolution -> the video resolution, on the compute
        device; made non-overlapping across objects when ``non_overlap_masks`` is set."""
        session = inference_state
        video_size = (session.video_height, session.video_width)
        any_res_masks = any_res_masks.to(session.device, non_blocking=True)
        if any_res_masks.shape[-2:] == video_size:
            video_res_masks = any_res_masks
        else:
            video_res_masks = F.interpolate(
                any_res_masks, size=video_size, mode="bilinear", align_corners=False
            )
        if self.non_overlap_masks:
            video_res_masks = self._apply_non_overlapping_constraints(video_res_masks)
        return video_res_masks

    def absent_masks(self, inference_state: InferenceSession, num_objects: int) -> Tensor:
        """Low-res logits ``(num_objects, 1, h, w)`` of objects reported absent."""
        size = self.image_size // 4
        return torch.full((num_objects, 1, size, size), NO_OBJ_SCORE, device=inference_state.device)

    def postprocess_masks(self, pred_masks: Tensor) -> Tensor:
        """Clean-up of predicted low-res logits before output (hole filling when ``fill_hole_area > 0``)."""
        if self.fill_hole_area > 0:
            return fill_holes_in_mask_scores(pred_masks, self.fill_hole_area)
        return pred_masks

    # ------------------------------------------------------------------ propagation

    @torch.inference_mode()
    @autocast_method
    def propagate_in_video_preflight(self, inference_state: InferenceSession) -> None:
        """Finalize prompts before tracking: encode their memories and move them into the outputs."""
        session = inference_state
        if session.num_objects == 0:
            raise RuntimeError(
                "No input points or masks are provided for any object; please add inputs first."
            )
        for obj_idx, obj in enumerate(session.objects):
            for frame_idx in sorted(set(obj.temp_tracked_outputs) | set(obj.temp_cond_outputs)):
                self._consolidate_prompts(session, obj_idx, frame_idx)
            if not obj.cond_outputs:
                raise RuntimeError(
                    f"No input points or masks are provided for object id {obj.obj_id}; please add inputs first."
                )
            # A frame promoted to conditioning must not also count as a tracked frame.
            for frame_idx in obj.cond_outputs:
                obj.tracked_outputs.pop(frame_idx, None)

    def _consolidate_prompts(self, session: InferenceSession, obj_idx: int, frame_idx: int) -> None:
        """Move an object's prompted outputs on a frame into its outputs, with their memories encoded."""
        obj = session.objects[obj_idx]
        for temp, outputs in (
            (obj.temp_tracked_outputs, obj.tracked_outputs),
            (obj.temp_cond_outputs, obj.cond_outputs),
        ):
            out = temp.pop(frame_idx, None)
            if out is None:
                continue
            if out["maskmem_features"] is None:
                self._encode_prompted_output(session, frame_idx, out)
            outputs[frame_idx] = out
            if self.clear_non_cond_mem_around_input:
                self.drop_memories_near(session, obj_idx, frame_idx)
        if frame_idx in obj.cond_outputs:
            obj.tracked_outputs.pop(frame_idx, None)

    def take_prompts_on(self, inference_state: InferenceSession, frame_idx: int) -> None:
        """During propagation: prompts added on ``frame_idx`` since it began become conditioning frames
        (objects created meanwhile included)."""
        for obj_idx in range(inference_state.num_objects):
            self._consolidate_prompts(inference_state, obj_idx, frame_idx)

    def _encode_prompted_output(self, session: InferenceSession, frame_idx: int, out: FrameOutput) -> None:
        """Run the memory encoder on a prompted frame's (final) mask and store the memory in ``out``."""
        out["maskmem_features"] = self.encode_mask_memory(
            session, frame_idx, out["pred_masks"], out["object_score_logits"]
        )
        out["maskmem_pos_enc"] = session.memory_pos_enc(out["maskmem_features"].size(0))

    def encode_mask_memory(
        self, inference_state: InferenceSession, frame_idx: int, pred_masks: Tensor, object_score_logits: Tensor
    ) -> Tensor:
        """The memory of low-res mask logits on a frame, encoded as a prompted frame's (the mask is
        binarized with ``binarize_mask_from_pts_for_mem_enc``), in the session's storage form. Prompted
        frames use it, and so do trackers that turn a tracked frame into a conditioning-like memory."""
        session = inference_state
        high_res_masks = F.interpolate(
            pred_masks.to(session.device), size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        features = self.frame_features(session, frame_idx, high_res_masks.size(0))
        maskmem_features, maskmem_pos_enc = self._encode_new_memory(
            current_vision_feats=features.vision_feats,
            feat_sizes=features.feat_sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits,
            is_mask_from_pts=True,
        )
        session.share_memory_pos_enc(maskmem_pos_enc)
        return self._store_memory(session, maskmem_features)

    def processing_timeline(
        self,
        inference_state: InferenceSession,
        start_frame_idx: Optional[int],
        max_frame_num_to_track: Optional[int],
        reverse: bool,
    ) -> Timeline:
        """Frames to visit: from the start frame (default: the earliest prompted frame) for at
        most ``max_frame_num_to_track`` further frames, backwards when ``reverse``."""
        session = inference_state
        if start_frame_idx is None:
            start_frame_idx = min(t for obj in session.objects for t in obj.cond_outputs)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = session.num_frames
        if max_frame_num_to_track < 0:
            raise ValueError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}")
        return Timeline.span(start_frame_idx, max_frame_num_to_track, reverse, session.num_frames)

    @torch.inference_mode()
    @autocast_method
    def propagate_in_video(
        self,
        inference_state: InferenceSession,
        start_frame_idx: Optional[int] = None,
        max_frame_num_to_track: Optional[int] = None,
        reverse: bool = False,
        objects_join_at_first_prompt: bool = False,
        observer: Optional[StepObserver] = None,
        before_frame: Optional[Callable[[int], None]] = None,
    ) -> Iterator[tuple[int, list[Any], Tensor]]:
        """Track all objects through the video, yielding ``(frame_idx, obj_ids, video_res_masks)``.

        ``video_res_masks`` are mask logits of shape ``(num_obj, 1, H, W)`` at the video resolution
        (foreground where > 0), in processing order, each frame as soon as the tracker's answer on it is
        final for every object (SAM 2: at once; SAM2Long: when its pathways agree). By default
        (upstream's behaviour) every object is tracked on every frame, also before its first prompt.
        With ``objects_join_at_first_prompt`` an object joins on its first prompted frame in processing
        order and is reported absent (``NO_OBJ_SCORE``) before it, with no compute spent on it there: the
        VOS protocol for objects that appear later (LVOS, YouTube-VOS), in one session.

        Prompts may be added while the propagation runs, on frames it has not reached: between yields,
        or from ``before_frame(frame_idx)``, which is called before each frame is processed (a detector
        re-prompting, a live user). They are used when their frame comes; a new object id joins there
        and is reported absent before it; the other objects go on unchanged. A live stream ends the
        propagation when it ends. ``observer``, if given, receives a :class:`~sam2.tracker.TrackStep`
        per object and processed frame (what the tracker chose, with IoU and object logit), plus the
        tracker's ``"end"`` records.
        """
        self.propagate_in_video_preflight(inference_state)
        timeline = self.processing_timeline(inference_state, start_frame_idx, max_frame_num_to_track, reverse)
        yield from propagate(
            self,
            inference_state,
            timeline,
            self.tracker,
            objects_join_at_first_prompt=objects_join_at_first_prompt,
            observer=observer,
            before_frame=before_frame,
        )

    # ------------------------------------------------------------------ tracking engine

    def frame_features(
        self, inference_state: InferenceSession, frame_idx: int, batch_size: int
    ) -> FrameFeatures:
        """Backbone features of a frame, expanded (without copying) to ``batch_size`` rows. The features of
        the most recently used frame are cached, so prompting or tracking several objects on a frame runs
        the image encoder once."""
        session = inference_state
        backbone_out = session.cached_features.get(frame_idx)
        if backbone_out is None:
            image = session.images[frame_idx].to(session.device).float().unsqueeze(0)
            backbone_out = self.forward_image(image)
            session.cached_features = {frame_idx: backbone_out}
        expanded_out = {
            key: [level.expand(batch_size, -1, -1, -1) for level in backbone_out[key]]
            for key in ("backbone_fpn", "vision_pos_enc")
        }
        _, vision_feats, vision_pos_embeds, feat_sizes = self._prepare_backbone_features(expanded_out)
        return FrameFeatures(frame_idx, vision_feats, vision_pos_embeds, feat_sizes)

    def object_memory(
        self, inference_state: InferenceSession, obj_idx: int, frame_idx: int, reverse: bool
    ) -> ItemMemory:
        """SAM 2's memory of an object at ``frame_idx``: conditioning frames, the latest tracked
        frames and their pointers, from the session (see :meth:`_select_memory_entries`)."""
        session = inference_state
        output_dict = session.objects[obj_idx].output_dict()
        return self._memory_item(
            *self._select_memory_entries(frame_idx, output_dict, session.num_frames, reverse)
        )

    def conditioning_memory(
        self, inference_state: InferenceSession, obj_idx: int, frame_idx: int, reverse: bool
    ) -> ItemMemory:
        """The conditioning frames of an object that frame ``frame_idx`` attends to, and their pointers."""
        return self.cond_frame_memory(frame_idx, inference_state.objects[obj_idx].cond_outputs, reverse)

    def encode_memories(
        self,
        inference_state: InferenceSession,
        features: FrameFeatures,
        candidates: Candidates,
        rows: Tensor,
        cands: Tensor,
    ) -> NewMemories:
        """:meth:`encode_candidates` for the chosen ``(rows[i], cands[i])``, memories in storage form.

        ``features`` may have any batch size; they are re-expanded to ``len(rows)``.
        """
        if features.batch_size != rows.numel():
            features = self.frame_features(inference_state, features.frame_idx, rows.numel())
        chosen = self.encode_candidates(features, candidates, rows, cands)
        return replace(chosen, maskmem_features=self._store_memory(inference_state, chosen.maskmem_features))

    def store_tracked_output(
        self,
        inference_state: InferenceSession,
        obj_idx: int,
        frame_idx: int,
        memory: NewMemories,
        pred_masks: Tensor,
    ) -> None:
        """Record an object's tracked (non-conditioning) output on a frame in the session, where
        later propagation and corrections read it; ``pred_masks`` are the post-processed logits."""
        session = inference_state
        session.objects[obj_idx].tracked_outputs[frame_idx] = {
            "maskmem_features": memory.maskmem_features,
            "maskmem_pos_enc": session.memory_pos_enc(len(memory)),
            "pred_masks": pred_masks.to(session.storage_device, non_blocking=True),
            # pointers are tiny and read on every frame, so they stay on the compute device
            "obj_ptr": memory.obj_ptr,
            "object_score_logits": memory.object_score_logits,
        }

    def memory_pos_enc(self, inference_state: InferenceSession) -> Tensor:
        """Spatial positional encoding ``[1, C_mem, h, w]`` of every memory frame of the session."""
        return inference_state.memory_pos_enc(1)[-1]

    def drop_memories_near(self, inference_state: InferenceSession, obj_idx: int, frame_idx: int) -> None:
        """Drop one object's tracked memories within ``num_maskmem`` strided frames of a prompted frame.

        Those memories may still show the object as it was before a correction and would feed
        the model conflicting evidence.
        """
        radius = self.memory_temporal_stride_for_eval * self.num_maskmem
        tracked = inference_state.objects[obj_idx].tracked_outputs
        for t in range(frame_idx - radius, frame_idx + radius + 1):
            tracked.pop(t, None)

    # ------------------------------------------------------------------ editing the session

    @torch.inference_mode()
    @autocast_method
    def clear_all_prompts_in_frame(
        self, inference_state: InferenceSession, frame_idx: int, obj_id: Any, need_output: bool = True
    ) -> Optional[tuple[int, list[Any], Tensor]]:
        """Remove an object's clicks/mask on a frame.

        Its prompted output there becomes an ordinary tracked output (and the frame counts as
        untracked again, so a new prompt starts a fresh conditioning frame). Returns the frame's
        updated ``(frame_idx, obj_ids, video_res_masks)`` unless ``need_output=False``. An unknown
        ``obj_id`` leaves the session unchanged.
        """
        session = inference_state
        obj_idx = session.obj_idx(obj_id)
        if obj_idx is not None:
            session.objects[obj_idx].clear_prompts_on(frame_idx)
        if not need_output:
            return None
        return self._frame_output(session, frame_idx, session.has_temp_cond_output(frame_idx))

    @torch.inference_mode()
    def reset_state(self, inference_state: InferenceSession) -> None:
        """Remove all objects, prompts and tracking results (the loaded video and cache stay)."""
        inference_state.reset()

    @torch.inference_mode()
    @autocast_method
    def remove_object(
        self, inference_state: InferenceSession, obj_id: Any, strict: bool = False, need_output: bool = True
    ) -> tuple[list[Any], list[tuple[int, Tensor]]]:
        """Delete an object from the session; the remaining objects keep their order.

        Returns ``(obj_ids, updated_frames)`` where ``updated_frames`` lists
        ``(frame_idx, video_res_masks)`` for the frames the removed object had prompts on (other
        objects' outputs are unchanged, but non-overlap may reveal more of them there). With
        ``strict``, an unknown id raises; otherwise it is ignored.
        """
        session = inference_state
        obj_idx = session.obj_idx(obj_id)
        updated_frames: list[tuple[int, Tensor]] = []
        if obj_idx is None:
            if strict:
                raise RuntimeError(
                    f"Cannot remove object id {obj_id} as it doesn't exist. All existing object ids: {session.obj_ids}."
                )
            return session.obj_ids, updated_frames
        if session.num_objects == 1:
            self.reset_state(session)
            return session.obj_ids, updated_frames
        removed = session.remove_object(obj_idx)
        if need_output:
            for frame_idx in removed.prompted_frames():
                is_cond = session.has_temp_cond_output(frame_idx)
                _, _, video_res_masks = self._frame_output(session, frame_idx, is_cond)
                updated_frames.append((frame_idx, video_res_masks))
        return session.obj_ids, updated_frames

    # ------------------------------------------------------------------ per-frame model calls

    def _store_memory(self, session: InferenceSession, maskmem_features: Tensor) -> Tensor:
        """Convert a new spatial memory to the session's storage dtype and device."""
        maskmem_features = maskmem_features.to(self.maskmem_storage_dtype)
        return maskmem_features.to(session.storage_device, non_blocking=True)


def __getattr__(name: str) -> Any:
    """``SAM2VideoPredictorVOS`` lives in :mod:`sam2.sam2_video_predictor_vos`; importable from here as upstream."""
    if name == "SAM2VideoPredictorVOS":
        from sam2.sam2_video_predictor_vos import SAM2VideoPredictorVOS

        return SAM2VideoPredictorVOS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
