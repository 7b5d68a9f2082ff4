"""Interactive video object segmentation with SAM 2.

:class:`SAM2VideoPredictor` drives :class:`~sam2.modeling.sam2_base.SAM2Base` over a video held in
an *inference state* (a session): users add clicks, boxes or masks for objects on some frames,
then propagate them forwards or backwards through the video.

Objects are tracked independently (each has its own memory bank and outputs) while sharing the
image features of each frame. The session is a plain ``dict`` whose keys follow upstream SAM 2
1.1.0, because callers (demos, evaluation scripts, SAM2Long) read them directly; it is built in
one place, :meth:`SAM2VideoPredictor._build_inference_state`.

Per object and frame the session keeps a compact output dict with ``maskmem_features`` (stored
in bfloat16 like upstream, and cast back to the compute dtype by ``SAM2Base`` when read, so
tracking also works on CPU without autocast), ``maskmem_pos_enc``, ``pred_masks`` (low-res
logits), ``obj_ptr`` and ``object_score_logits``.

Propagation runs on the tracking engine (:mod:`sam2.engine`): :meth:`frame_features`,
:meth:`object_memory` / :meth:`conditioning_memory`, :meth:`assemble_memory`,
:meth:`decode_candidates` and :meth:`encode_memories`, with one row per object; SAM2Long drives
the same calls with one row per (object, pathway). Prompted frames use :meth:`track_step`.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from sam2.engine import Candidates, FrameFeatures, NewMemories, PropagationCursor, Timeline
from sam2.modeling.memory import ItemMemory
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base
from sam2.precision import autocast_method
from sam2.utils.misc import (
    HEAP_RELEASE_EVERY,
    concat_points,
    fill_holes_in_mask_scores,
    load_video_frames,
    release_free_heap,
)
from sam2.utils.output_store import DEFAULT_RAM_BUDGET_BYTES, OutputStore

InferenceState = dict[str, Any]
FrameOutput = dict[str, Any]

COND = "cond_frame_outputs"
NON_COND = "non_cond_frame_outputs"


def _empty_output_dict() -> dict[str, dict[int, FrameOutput]]:
    """Per-object outputs, split into conditioning (prompted) and tracked frames."""
    return {COND: {}, NON_COND: {}}


class SAM2VideoPredictor(SAM2Base):
    """SAM 2 for videos: per-object prompts on frames, then memory-based propagation."""

    #: dtype of spatial memories kept in the session (upstream's choice: half the memory of fp32;
    #: the rounding is part of the reference numerics, so changing it changes the outputs)
    maskmem_storage_dtype: torch.dtype = torch.bfloat16

    #: session entries that hold one value per object index
    per_object_state_keys: tuple[str, ...] = (
        "point_inputs_per_obj",
        "mask_inputs_per_obj",
        "output_dict_per_obj",
        "temp_output_dict_per_obj",
        "frames_tracked_per_obj",
    )

    def __init__(
        self,
        fill_hole_area: int = 0,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
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
            **kwargs: the :class:`SAM2Base` configuration.
        """
        super().__init__(**kwargs)
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond

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
    ) -> InferenceState:
        """Load a video and start a session on it.

        ``video_path`` is a folder of JPEG/PNG frames, a video file, or in-memory frames (see
        :func:`sam2.utils.misc.load_video_frames`). ``offload_video_to_cpu`` keeps the frames in
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
        them. ``output_ram_budget_bytes=None`` keeps everything in memory, as upstream does.
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
        inference_state = self._build_inference_state(
            images, video_height, video_width, offload_video_to_cpu, offload_state_to_cpu
        )
        inference_state["output_store"] = OutputStore(
            output_ram_budget_bytes, spill_dir, retain=self._retains_tracked_outputs()
        )
        # Encode frame 0 right away: it is cached and usually the first frame users prompt.
        self._get_image_feature(inference_state, frame_idx=0, batch_size=1)
        return inference_state

    def _build_inference_state(
        self,
        images: Any,
        video_height: int,
        video_width: int,
        offload_video_to_cpu: bool,
        offload_state_to_cpu: bool,
    ) -> InferenceState:
        """Create an empty session for already loaded (normalized, square) frames."""
        device = self.device
        return {
            "images": images,
            "num_frames": len(images),
            "offload_video_to_cpu": offload_video_to_cpu,
            "offload_state_to_cpu": offload_state_to_cpu,
            # original size, used to resize output masks
            "video_height": video_height,
            "video_width": video_width,
            "device": device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
            # prompts per object: {obj_idx: {frame_idx: inputs}}
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            # backbone features of the most recently used frame: {frame_idx: (image, backbone_out)}
            "cached_features": {},
            # values identical for all frames and objects (the memory positional encoding)
            "constants": {},
            # client object ids <-> model object indices (0, 1, ... in order of appearance)
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            # per-object outputs used as memory: {obj_idx: {COND: {...}, NON_COND: {...}}}
            "output_dict_per_obj": {},
            # outputs of prompts not yet consolidated into "output_dict_per_obj"
            "temp_output_dict_per_obj": {},
            # frames already tracked per object: {obj_idx: {frame_idx: {"reverse": bool}}}
            "frames_tracked_per_obj": {},
        }

    def _retains_tracked_outputs(self) -> bool:
        """Whether sessions keep tracked outputs (SAM 2 reads them as memory, so always)."""
        return True

    def _add_object_storage(self, inference_state: InferenceState, obj_idx: int) -> None:
        """Create the empty per-object containers of a new object slot (tracked outputs in the
        session's output store)."""
        inference_state["point_inputs_per_obj"][obj_idx] = {}
        inference_state["mask_inputs_per_obj"][obj_idx] = {}
        store = inference_state.get("output_store")
        if store is None:  # a session built without init_state keeps outputs in plain dicts
            inference_state["output_dict_per_obj"][obj_idx] = _empty_output_dict()
        else:
            inference_state["output_dict_per_obj"][obj_idx] = {COND: {}, NON_COND: store.frames()}
        inference_state["temp_output_dict_per_obj"][obj_idx] = _empty_output_dict()
        inference_state["frames_tracked_per_obj"][obj_idx] = {}

    def _obj_id_to_idx(self, inference_state: InferenceState, obj_id: Any) -> int:
        """Model-side index of a client object id; unseen ids get a new slot (at any time)."""
        obj_idx = inference_state["obj_id_to_idx"].get(obj_id)
        if obj_idx is not None:
            return obj_idx
        obj_idx = len(inference_state["obj_id_to_idx"])
        inference_state["obj_id_to_idx"][obj_id] = obj_idx
        inference_state["obj_idx_to_id"][obj_idx] = obj_id
        inference_state["obj_ids"] = list(inference_state["obj_id_to_idx"])
        self._add_object_storage(inference_state, obj_idx)
        return obj_idx

    def _obj_idx_to_id(self, inference_state: InferenceState, obj_idx: int) -> Any:
        """Client object id of a model-side object index."""
        return inference_state["obj_idx_to_id"][obj_idx]

    def _get_obj_num(self, inference_state: InferenceState) -> int:
        """Number of objects in the session."""
        return len(inference_state["obj_idx_to_id"])

    # ------------------------------------------------------------------ prompts

    def _prepare_point_prompt(
        self,
        inference_state: InferenceState,
        points: Any,
        labels: Any,
        box: Any,
        clear_old_points: bool,
        normalize_coords: bool,
    ) -> tuple[Tensor, Tensor]:
        """Validate clicks/box and convert them to model-space ``(1, P, 2)`` coords and ``(1, P)`` labels.

        A box becomes two leading points labelled 2 (top-left) and 3 (bottom-right), the way
        SAM 2 was trained.
        """
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        if box is not None and not clear_old_points:
            raise ValueError(
                "a box must come before any click on a frame; use clear_old_points=True with a box"
            )
        width, height = inference_state["video_width"], inference_state["video_height"]
        limits = (width, height) if normalize_coords else (1.0, 1.0)
        space = (
            f"video pixels (0..{width} x 0..{height})"
            if normalize_coords
            else "[0, 1] (normalize_coords=False)"
        )
        coords = torch.zeros(0, 2) if points is None else torch.as_tensor(points, dtype=torch.float32)
        point_labels = (
            torch.zeros(0, dtype=torch.int32)
            if labels is None
            else torch.as_tensor(labels, dtype=torch.int32)
        )
        if coords.dim() == 2:
            coords = coords.unsqueeze(0)
        if point_labels.dim() == 1:
            point_labels = point_labels.unsqueeze(0)
        if coords.dim() != 3 or coords.shape[0] != 1 or coords.shape[2] != 2:
            raise ValueError(f"points must have shape (P, 2) as (x, y) pairs, got {tuple(coords.shape)}")
        if point_labels.dim() != 2 or point_labels.shape != coords.shape[:2]:
            raise ValueError(
                f"labels must have one entry per point: {coords.shape[1]} points but labels of shape "
                f"{tuple(point_labels.shape)}"
            )
        bad_labels = sorted(set(point_labels.flatten().tolist()) - {0, 1, 2, 3})
        if bad_labels:
            raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {bad_labels}")
        _check_in_frame("points", coords[0], limits, space)
        if box is not None:
            box_coords = torch.as_tensor(box, dtype=torch.float32)
            if box_coords.numel() != 4:
                raise ValueError(f"box must be (x0, y0, x1, y1), got {tuple(box_coords.shape)} values")
            box_coords = box_coords.reshape(1, 2, 2)
            x0, y0, x1, y1 = box_coords.flatten().tolist()
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"box must have x0 < x1 and y0 < y1, got {(x0, y0, x1, y1)}")
            _check_in_frame("box", box_coords[0], limits, space)
            box_coords = box_coords.to(coords.device)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=point_labels.device)
            coords = torch.cat([box_coords, coords], dim=1)
            point_labels = torch.cat([box_labels, point_labels], dim=1)
        if normalize_coords:
            video_size = [inference_state["video_width"], inference_state["video_height"]]
            coords = coords / torch.tensor(video_size, dtype=torch.float32, device=coords.device)
        coords = coords * self.image_size
        device = inference_state["device"]
        return coords.to(device), point_labels.to(device)

    @torch.inference_mode()
    @autocast_method
    def add_new_points_or_box(
        self,
        inference_state: InferenceState,
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
        self._check_frame_idx(inference_state, frame_idx)
        coords, point_labels = self._prepare_point_prompt(
            inference_state, points, labels, box, clear_old_points, normalize_coords
        )
        obj_idx = self._obj_id_to_idx(inference_state, obj_id)
        point_inputs_per_frame = inference_state["point_inputs_per_obj"][obj_idx]
        old_inputs = None if clear_old_points else point_inputs_per_frame.get(frame_idx)
        point_inputs = concat_points(old_inputs, coords, point_labels)
        point_inputs_per_frame[frame_idx] = point_inputs
        inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._predict_prompted_frame(
            inference_state, obj_idx, frame_idx, point_inputs=point_inputs, mask_inputs=None
        )

    def add_new_points(self, *args: Any, **kwargs: Any) -> tuple[int, list[Any], Tensor]:
        """Deprecated alias of :meth:`add_new_points_or_box`."""
        return self.add_new_points_or_box(*args, **kwargs)

    @torch.inference_mode()
    @autocast_method
    def add_new_mask(
        self, inference_state: InferenceState, frame_idx: int, obj_id: Any, mask: Any
    ) -> tuple[int, list[Any], Tensor]:
        """Give one object's mask (``(H, W)``, any resolution) on one frame as its prompt.

        The mask replaces any clicks of the object on this frame. Returns
        ``(frame_idx, obj_ids, video_res_masks)`` like :meth:`add_new_points_or_box`.
        """
        self._check_frame_idx(inference_state, frame_idx)
        if not isinstance(mask, Tensor):
            mask = torch.tensor(np.asarray(mask), dtype=torch.bool)
        video_size = (inference_state["video_height"], inference_state["video_width"])
        if mask.dim() != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(mask.shape)}")
        if tuple(mask.shape) != video_size:
            raise ValueError(
                f"mask must have the video's size (H, W) = {video_size}, got {tuple(mask.shape)}"
            )
        mask_inputs = mask[None, None].float().to(inference_state["device"])
        if mask_inputs.shape[-2:] != (self.image_size, self.image_size):
            mask_inputs = F.interpolate(
                mask_inputs,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,  # the mask is usually larger than the model input
            )
            mask_inputs = (mask_inputs >= 0.5).float()
        obj_idx = self._obj_id_to_idx(inference_state, obj_id)
        inference_state["mask_inputs_per_obj"][obj_idx][frame_idx] = mask_inputs
        inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._predict_prompted_frame(
            inference_state, obj_idx, frame_idx, point_inputs=None, mask_inputs=mask_inputs
        )

    def _check_frame_idx(self, inference_state: InferenceState, frame_idx: Any) -> None:
        """A prompt's frame must be an integer index of the video."""
        num_frames = inference_state["num_frames"]
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
            raise ValueError(f"frame_idx must be an integer, got {frame_idx!r}")
        if not 0 <= frame_idx < num_frames:
            raise ValueError(f"frame_idx {frame_idx} is outside the video's frames 0..{num_frames - 1}")
        cursor = inference_state.get("propagation")
        if cursor is not None and cursor.passed(frame_idx):
            raise ValueError(
                f"frame {frame_idx} was already processed by the propagation in progress (its next frame "
                f"is {cursor.next_frame}); prompts added during a propagation must be on frames still ahead"
            )

    def _previous_mask_logits(
        self, inference_state: InferenceState, obj_idx: int, frame_idx: int, storage_key: str
    ) -> Optional[Tensor]:
        """The object's latest low-res logits on a frame (fed back with new clicks), if any."""
        out = self._latest_output(inference_state, obj_idx, frame_idx, storage_key)
        if out is None or out["pred_masks"] is None:
            return None
        logits = out["pred_masks"].to(inference_state["device"], non_blocking=True)
        # Bound the logits so that very confident old predictions stay numerically tame.
        return torch.clamp(logits, -32.0, 32.0)

    def _predict_prompted_frame(
        self,
        inference_state: InferenceState,
        obj_idx: int,
        frame_idx: int,
        point_inputs: Optional[dict[str, Tensor]],
        mask_inputs: Optional[Tensor],
    ) -> tuple[int, list[Any], Tensor]:
        """Predict an object's mask on a frame that just received a prompt.

        A frame the object was never tracked on is an initial conditioning frame (segmented like
        SAM, without memory); on a tracked frame the prompt corrects the tracked mask. The memory
        encoder is deferred to :meth:`propagate_in_video_preflight`, once prompting is done.
        """
        frames_tracked = inference_state["frames_tracked_per_obj"][obj_idx]
        is_init_cond_frame = frame_idx not in frames_tracked
        reverse = False if is_init_cond_frame else frames_tracked[frame_idx]["reverse"]
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        storage_key = COND if is_cond else NON_COND
        prev_sam_mask_logits = None
        if point_inputs is not None:
            prev_sam_mask_logits = self._previous_mask_logits(
                inference_state, obj_idx, frame_idx, storage_key
            )
        current_out, _ = self._run_single_frame_inference(
            inference_state=inference_state,
            output_dict=inference_state["output_dict_per_obj"][obj_idx],
            frame_idx=frame_idx,
            batch_size=1,
            is_init_cond_frame=is_init_cond_frame,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            reverse=reverse,
            run_mem_encoder=False,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        inference_state["temp_output_dict_per_obj"][obj_idx][storage_key][frame_idx] = current_out
        return self._frame_output(inference_state, frame_idx, is_cond)

    def _frame_output(
        self, inference_state: InferenceState, frame_idx: int, is_cond: bool
    ) -> tuple[int, list[Any], Tensor]:
        """``(frame_idx, obj_ids, video_res_masks)`` for all objects on a frame, from the latest outputs."""
        consolidated_out = self._consolidate_temp_output_across_obj(
            inference_state, frame_idx, is_cond=is_cond, consolidate_at_video_res=True
        )
        video_res_masks = self.video_res_masks(inference_state, consolidated_out["pred_masks_video_res"])
        return frame_idx, inference_state["obj_ids"], video_res_masks

    # ------------------------------------------------------------------ outputs

    def video_res_masks(self, inference_state: InferenceState, any_res_masks: Tensor) -> Tensor:
        """Mask logits ``(num_obj, 1, h, w)`` at any resolution -> the video resolution, on the compute
        device; made non-overlapping across objects when ``non_overlap_masks`` is set."""
        video_size = (inference_state["video_height"], inference_state["video_width"])
        any_res_masks = any_res_masks.to(inference_state["device"], non_blocking=True)
        if any_res_masks.shape[-2:] == video_size:
            video_res_masks = any_res_masks
        else:
            video_res_masks = F.interpolate(
                any_res_masks, size=video_size, mode="bilinear", align_corners=False
            )
        if self.non_overlap_masks:
            video_res_masks = self._apply_non_overlapping_constraints(video_res_masks)
        return video_res_masks

    def _latest_output(
        self, inference_state: InferenceState, obj_idx: int, frame_idx: int, storage_key: str
    ) -> Optional[FrameOutput]:
        """An object's most recent output on a frame: an unconsolidated prompt result first,
        then its conditioning output, then its tracked output."""
        out = inference_state["temp_output_dict_per_obj"][obj_idx][storage_key].get(frame_idx)
        if out is None:
            obj_output_dict = inference_state["output_dict_per_obj"][obj_idx]
            out = obj_output_dict[COND].get(frame_idx)
            if out is None:
                out = obj_output_dict[NON_COND].get(frame_idx)
        return out

    def _consolidate_temp_output_across_obj(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        is_cond: bool,
        consolidate_at_video_res: bool = False,
    ) -> dict[str, Tensor]:
        """Gather every object's latest mask logits on a frame into one ``(num_obj, 1, H, W)`` tensor.

        Objects without any output on the frame get ``NO_OBJ_SCORE``. The result is at the video
        resolution (key ``"pred_masks_video_res"``) or at the low-res mask size (``"pred_masks"``).
        """
        num_objects = self._get_obj_num(inference_state)
        storage_key = COND if is_cond else NON_COND
        if consolidate_at_video_res:
            size = (inference_state["video_height"], inference_state["video_width"])
            mask_key = "pred_masks_video_res"
        else:
            size = (self.image_size // 4, self.image_size // 4)
            mask_key = "pred_masks"
        consolidated = torch.full(
            (num_objects, 1, *size),
            fill_value=NO_OBJ_SCORE,
            dtype=torch.float32,
            device=inference_state["storage_device"],
        )
        for obj_idx in range(num_objects):
            out = self._latest_output(inference_state, obj_idx, frame_idx, storage_key)
            if out is None:
                continue
            obj_mask = out["pred_masks"]
            if obj_mask.shape[-2:] != size:
                obj_mask = F.interpolate(obj_mask, size=size, mode="bilinear", align_corners=False)
            consolidated[obj_idx : obj_idx + 1] = obj_mask
        return {mask_key: consolidated}

    # ------------------------------------------------------------------ propagation

    @torch.inference_mode()
    @autocast_method
    def propagate_in_video_preflight(self, inference_state: InferenceState) -> None:
        """Finalize prompts before tracking: encode their memories and move them into the outputs."""
        num_objects = self._get_obj_num(inference_state)
        if num_objects == 0:
            raise RuntimeError(
                "No input points or masks are provided for any object; please add inputs first."
            )
        for obj_idx in range(num_objects):
            obj_output_dict = inference_state["output_dict_per_obj"][obj_idx]
            temp = inference_state["temp_output_dict_per_obj"][obj_idx]
            for frame_idx in sorted(set(temp[NON_COND]) | set(temp[COND])):
                self._consolidate_prompts(inference_state, obj_idx, frame_idx)
            if not obj_output_dict[COND]:
                obj_id = self._obj_idx_to_id(inference_state, obj_idx)
                raise RuntimeError(
                    f"No input points or masks are provided for object id {obj_id}; please add inputs first."
                )
            # A frame promoted to conditioning must not also count as a tracked frame.
            for frame_idx in obj_output_dict[COND]:
                obj_output_dict[NON_COND].pop(frame_idx, None)

    def _consolidate_prompts(self, inference_state: InferenceState, obj_idx: int, frame_idx: int) -> None:
        """Move an object's prompted outputs on a frame into its outputs, with their memories encoded."""
        obj_output_dict = inference_state["output_dict_per_obj"][obj_idx]
        obj_temp_output_dict = inference_state["temp_output_dict_per_obj"][obj_idx]
        for storage_key in (NON_COND, COND):
            out = obj_temp_output_dict[storage_key].pop(frame_idx, None)
            if out is None:
                continue
            if out["maskmem_features"] is None:
                self._encode_prompted_output(inference_state, frame_idx, out)
            obj_output_dict[storage_key][frame_idx] = out
            if self.clear_non_cond_mem_around_input:
                self.drop_memories_near(inference_state, obj_idx, frame_idx)
        if frame_idx in obj_output_dict[COND]:
            obj_output_dict[NON_COND].pop(frame_idx, None)

    def take_prompts_on(self, inference_state: InferenceState, frame_idx: int) -> None:
        """During propagation: prompts added on ``frame_idx`` since it began become conditioning frames
        (objects created meanwhile included)."""
        for obj_idx in range(self._get_obj_num(inference_state)):
            self._consolidate_prompts(inference_state, obj_idx, frame_idx)

    def frame_available(self, inference_state: InferenceState, frame_idx: int) -> bool:
        """Whether the video has ``frame_idx``: always, except for a live stream that ended before it
        (asking may wait for the stream to deliver the frame)."""
        has_frame = getattr(inference_state["images"], "has_frame", None)
        return True if has_frame is None else has_frame(frame_idx)

    def begin_propagation(self, inference_state: InferenceState, timeline: Timeline) -> PropagationCursor:
        """Record the propagation now running on the session (see :class:`PropagationCursor`)."""
        cursor = PropagationCursor(timeline)
        inference_state["propagation"] = cursor
        return cursor

    def end_propagation(self, inference_state: InferenceState, cursor: PropagationCursor) -> None:
        if inference_state.get("propagation") is cursor:
            inference_state["propagation"] = None

    def forget_passed_outputs(self, inference_state: InferenceState, frame_idx: int) -> None:
        """On a live stream: drop tracked outputs older than any memory attention can still read
        (``max(num_maskmem, max_obj_ptrs_in_encoder)`` frames back). Their frames are gone, so no
        prompt can come back to them, and keeping them would grow the session with the stream."""
        oldest = frame_idx - max(self.num_maskmem, self.max_obj_ptrs_in_encoder)
        for obj_idx, out_dict in inference_state["output_dict_per_obj"].items():
            for f in [f for f in out_dict[NON_COND] if f < oldest]:
                del out_dict[NON_COND][f]
            tracked = inference_state["frames_tracked_per_obj"][obj_idx]
            for f in [f for f in tracked if f < oldest and f not in out_dict[COND]]:
                del tracked[f]

    def frame_done(self, step: int) -> None:
        """Housekeeping after each propagated frame: freed heap pages go back to the OS now and then."""
        if step % HEAP_RELEASE_EVERY == HEAP_RELEASE_EVERY - 1:
            release_free_heap()

    def progress(self, inference_state: InferenceState, timeline: Timeline, desc: str) -> tqdm:
        """A progress bar over the timeline (frames/s and ETA; no total for a live stream)."""
        live = getattr(inference_state["images"], "live", False)
        desc = f"{desc} [{self.precision.short}]"
        return tqdm(total=None if live else len(timeline), desc=desc, unit="frame")

    def _encode_prompted_output(
        self, inference_state: InferenceState, frame_idx: int, out: FrameOutput
    ) -> None:
        """Run the memory encoder on a prompted frame's (final) mask and store the memory in ``out``."""
        high_res_masks = F.interpolate(
            out["pred_masks"].to(inference_state["device"]),
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )
        out["maskmem_features"], out["maskmem_pos_enc"] = self._run_memory_encoder(
            inference_state=inference_state,
            frame_idx=frame_idx,
            batch_size=high_res_masks.size(0),
            high_res_masks=high_res_masks,
            object_score_logits=out["object_score_logits"],
            is_mask_from_pts=True,  # the user interacted with this frame
        )

    def processing_timeline(
        self,
        inference_state: InferenceState,
        start_frame_idx: Optional[int],
        max_frame_num_to_track: Optional[int],
        reverse: bool,
    ) -> Timeline:
        """Frames to visit: from the start frame (default: the earliest prompted frame) for at
        most ``max_frame_num_to_track`` further frames, backwards when ``reverse``."""
        num_frames = inference_state["num_frames"]
        if start_frame_idx is None:
            start_frame_idx = min(
                t for out_dict in inference_state["output_dict_per_obj"].values() for t in out_dict[COND]
            )
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if max_frame_num_to_track < 0:
            raise ValueError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}")
        return Timeline.span(start_frame_idx, max_frame_num_to_track, reverse, num_frames)

    @torch.inference_mode()
    @autocast_method
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: Optional[int] = None,
        max_frame_num_to_track: Optional[int] = None,
        reverse: bool = False,
        objects_join_at_first_prompt: bool = False,
        before_frame: Optional[Callable[[int], None]] = None,
    ) -> Iterator[tuple[int, list[Any], Tensor]]:
        """Track all objects through the video, yielding ``(frame_idx, obj_ids, video_res_masks)``.

        ``video_res_masks`` are mask logits of shape ``(num_obj, 1, H, W)`` at the video
        resolution (foreground where > 0). By default (upstream's behaviour) every object is tracked
        on every frame, also before its first prompt. With ``objects_join_at_first_prompt`` an object
        joins on its first prompted frame in processing order and is reported absent
        (``NO_OBJ_SCORE``) before it, with no compute spent on it there: the VOS protocol for objects
        that appear later (LVOS, YouTube-VOS), in one session.

        Prompts may be added while the propagation runs, on frames it has not reached: between yields,
        or from ``before_frame(frame_idx)``, which is called before each frame is processed (a detector
        re-prompting, a live user). They are used when their frame comes; a new object id joins the
        batch there and is reported absent before it; the other objects go on unchanged. A live stream
        ends the propagation when it ends. (The loop is :meth:`propagation_steps`, shared with SAM2Long.)
        """
        self.propagate_in_video_preflight(inference_state)
        timeline = self.processing_timeline(inference_state, start_frame_idx, max_frame_num_to_track, reverse)
        known = self._get_obj_num(inference_state)
        waiting = set(range(known)) if objects_join_at_first_prompt else set()
        steps = self.propagation_steps(inference_state, timeline, before_frame, "propagate in video")
        with contextlib.closing(steps):
            for _, frame_idx in steps:
                # objects created during the propagation join on their first prompted frame
                now = self._get_obj_num(inference_state)
                waiting |= set(range(known, now))
                known = now
                waiting -= self.objects_prompted_on(inference_state, frame_idx)
                pred_masks = self._propagate_frame(inference_state, frame_idx, reverse, waiting)
                yield frame_idx, inference_state["obj_ids"], self.video_res_masks(inference_state, pred_masks)

    def propagation_steps(
        self,
        inference_state: InferenceState,
        timeline: Timeline,
        before_frame: Optional[Callable[[int], None]],
        desc: str,
    ) -> Iterator[tuple[int, int]]:
        """The ``(step, frame_idx)`` of a propagation, each once its prompts are taken: the frame exists
        (a live stream may end), ``before_frame`` ran, prompts added on it became conditioning frames.
        Records the running propagation in the session (:class:`PropagationCursor`), draws the progress
        bar and does per-frame housekeeping after the caller's work on each frame."""
        cursor = self.begin_propagation(inference_state, timeline)
        live = getattr(inference_state["images"], "live", False)
        try:
            with self.progress(inference_state, timeline, desc) as bar:
                for step, frame_idx in timeline.steps():
                    if not self.frame_available(inference_state, frame_idx):
                        return
                    if before_frame is not None:
                        before_frame(frame_idx)
                    self.take_prompts_on(inference_state, frame_idx)
                    cursor.next_step = step + 1
                    yield step, frame_idx
                    if live:
                        self.forget_passed_outputs(inference_state, frame_idx)
                    self.frame_done(step)
                    bar.update()
        finally:
            self.end_propagation(inference_state, cursor)

    def objects_prompted_on(self, inference_state: InferenceState, frame_idx: int) -> set[int]:
        """Indices of the objects that have a conditioning frame (a prompt) on ``frame_idx``."""
        return {
            obj_idx
            for obj_idx, out_dict in inference_state["output_dict_per_obj"].items()
            if frame_idx in out_dict[COND]
        }

    def absent_masks(self, inference_state: InferenceState, num_objects: int) -> Tensor:
        """Low-res logits ``(num_objects, 1, h, w)`` of objects reported absent."""
        size = self.image_size // 4
        return torch.full((num_objects, 1, size, size), NO_OBJ_SCORE, device=inference_state["device"])

    def _propagate_frame(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        reverse: bool,
        waiting: AbstractSet[int] = frozenset(),
    ) -> Tensor:
        """Low-res mask logits ``(num_obj, 1, h, w)`` of all objects on one frame during propagation;
        objects in ``waiting`` (not joined yet) are absent."""
        per_object = [
            self.absent_masks(inference_state, 1)
            if obj_idx in waiting
            else self._propagate_object(inference_state, obj_idx, frame_idx, reverse)
            for obj_idx in range(self._get_obj_num(inference_state))
        ]
        return torch.cat(per_object, dim=0)

    def _propagate_object(
        self, inference_state: InferenceState, obj_idx: int, frame_idx: int, reverse: bool
    ) -> Tensor:
        """One object's low-res logits on a frame: its prompt result on conditioning frames,
        otherwise SAM 2's best candidate given its memory, stored as a new tracked memory."""
        obj_output_dict = inference_state["output_dict_per_obj"][obj_idx]
        cond_out = obj_output_dict[COND].get(frame_idx)
        if cond_out is not None:
            pred_masks = cond_out["pred_masks"].to(inference_state["device"], non_blocking=True)
            if self.clear_non_cond_mem_around_input:
                self.drop_memories_near(inference_state, obj_idx, frame_idx)
        else:
            features = self.frame_features(inference_state, frame_idx, batch_size=1)
            memory = self.assemble_memory(
                [self.object_memory(inference_state, obj_idx, frame_idx, reverse)],
                inference_state["num_frames"],
                inference_state["device"],
                features.vision_feats[-1].dtype,
            )
            candidates = self.decode_candidates(features, memory)
            rows = torch.zeros(1, dtype=torch.long, device=candidates.ious.device)
            chosen = self.encode_memories(inference_state, features, candidates, rows, candidates.best())
            pred_masks = self.postprocess_masks(chosen.pred_masks)
            self.store_tracked_output(inference_state, obj_idx, frame_idx, chosen, pred_masks)
        inference_state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
        return pred_masks

    # ------------------------------------------------------------------ tracking engine

    def frame_features(
        self, inference_state: InferenceState, frame_idx: int, batch_size: int
    ) -> FrameFeatures:
        """Backbone features of a frame for ``batch_size`` rows (the image encoder runs once per frame)."""
        _, _, vision_feats, vision_pos_embeds, feat_sizes = self._get_image_feature(
            inference_state, frame_idx, batch_size
        )
        return FrameFeatures(frame_idx, vision_feats, vision_pos_embeds, feat_sizes)

    def object_memory(
        self, inference_state: InferenceState, obj_idx: int, frame_idx: int, reverse: bool
    ) -> ItemMemory:
        """SAM 2's memory of an object at ``frame_idx``: conditioning frames, the latest tracked
        frames and their pointers, from the session (see :meth:`_select_memory_entries`)."""
        entries = self._select_memory_entries(
            frame_idx, inference_state["output_dict_per_obj"][obj_idx], inference_state["num_frames"], reverse
        )
        return self._memory_item(*entries)

    def conditioning_memory(
        self, inference_state: InferenceState, obj_idx: int, frame_idx: int, reverse: bool
    ) -> ItemMemory:
        """The conditioning frames of an object that frame ``frame_idx`` attends to, and their pointers."""
        cond_outputs = inference_state["output_dict_per_obj"][obj_idx][COND]
        return self.cond_frame_memory(frame_idx, cond_outputs, reverse)

    def encode_memories(
        self,
        inference_state: InferenceState,
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
        inference_state: InferenceState,
        obj_idx: int,
        frame_idx: int,
        memory: NewMemories,
        pred_masks: Tensor,
    ) -> None:
        """Record an object's tracked (non-conditioning) output on a frame in the session, where
        later propagation and corrections read it; ``pred_masks`` are the post-processed logits."""
        inference_state["output_dict_per_obj"][obj_idx][NON_COND][frame_idx] = {
            "maskmem_features": memory.maskmem_features,
            "maskmem_pos_enc": self._maskmem_pos_enc(inference_state, len(memory)),
            "pred_masks": pred_masks.to(inference_state["storage_device"], non_blocking=True),
            # pointers are tiny and read on every frame, so they stay on the compute device
            "obj_ptr": memory.obj_ptr,
            "object_score_logits": memory.object_score_logits,
        }

    # ------------------------------------------------------------------ editing the session

    @torch.inference_mode()
    @autocast_method
    def clear_all_prompts_in_frame(
        self, inference_state: InferenceState, frame_idx: int, obj_id: Any, need_output: bool = True
    ) -> Optional[tuple[int, list[Any], Tensor]]:
        """Remove an object's clicks/mask on a frame.

        Its prompted output there becomes an ordinary tracked output (and the frame counts as
        untracked again, so a new prompt starts a fresh conditioning frame). Returns the frame's
        updated ``(frame_idx, obj_ids, video_res_masks)`` unless ``need_output=False``. An unknown
        ``obj_id`` leaves the session unchanged.
        """
        obj_idx = inference_state["obj_id_to_idx"].get(obj_id)
        if obj_idx is not None:
            inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
            inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
            obj_temp_output_dict = inference_state["temp_output_dict_per_obj"][obj_idx]
            obj_temp_output_dict[COND].pop(frame_idx, None)
            obj_temp_output_dict[NON_COND].pop(frame_idx, None)
            obj_output_dict = inference_state["output_dict_per_obj"][obj_idx]
            out = obj_output_dict[COND].pop(frame_idx, None)
            if out is not None:
                obj_output_dict[NON_COND][frame_idx] = out
                inference_state["frames_tracked_per_obj"][obj_idx].pop(frame_idx, None)
        if not need_output:
            return None
        return self._frame_output(
            inference_state, frame_idx, self._any_temp_cond_output(inference_state, frame_idx)
        )

    def _any_temp_cond_output(self, inference_state: InferenceState, frame_idx: int) -> bool:
        """Whether some object has an unconsolidated conditioning prompt result on a frame."""
        return any(frame_idx in temp[COND] for temp in inference_state["temp_output_dict_per_obj"].values())

    @torch.inference_mode()
    def reset_state(self, inference_state: InferenceState) -> None:
        """Remove all objects, prompts and tracking results (the loaded video and cache stay)."""
        self._reset_tracking_results(inference_state)
        inference_state["obj_id_to_idx"].clear()
        inference_state["obj_idx_to_id"].clear()
        inference_state["obj_ids"].clear()
        for key in self.per_object_state_keys:
            inference_state[key].clear()

    def _reset_tracking_results(self, inference_state: InferenceState) -> None:
        """Empty every object's prompts and outputs, keeping the objects themselves."""
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "frames_tracked_per_obj"):
            for per_frame in inference_state[key].values():
                per_frame.clear()
        for key in ("output_dict_per_obj", "temp_output_dict_per_obj"):
            for obj_output_dict in inference_state[key].values():
                obj_output_dict[COND].clear()
                obj_output_dict[NON_COND].clear()

    @torch.inference_mode()
    @autocast_method
    def remove_object(
        self, inference_state: InferenceState, obj_id: Any, strict: bool = False, need_output: bool = True
    ) -> tuple[list[Any], list[tuple[int, Tensor]]]:
        """Delete an object from the session; the remaining objects keep their order.

        Returns ``(obj_ids, updated_frames)`` where ``updated_frames`` lists
        ``(frame_idx, video_res_masks)`` for the frames the removed object had prompts on (other
        objects' outputs are unchanged, but non-overlap may reveal more of them there). With
        ``strict``, an unknown id raises; otherwise it is ignored.
        """
        obj_idx_to_remove = inference_state["obj_id_to_idx"].get(obj_id)
        updated_frames: list[tuple[int, Tensor]] = []
        if obj_idx_to_remove is None:
            if strict:
                raise RuntimeError(
                    f"Cannot remove object id {obj_id} as it doesn't exist. "
                    f"All existing object ids: {inference_state['obj_ids']}."
                )
            return inference_state["obj_ids"], updated_frames
        if self._get_obj_num(inference_state) == 1:
            self.reset_state(inference_state)
            return inference_state["obj_ids"], updated_frames

        prompted_frames = sorted(
            set(inference_state["point_inputs_per_obj"][obj_idx_to_remove])
            | set(inference_state["mask_inputs_per_obj"][obj_idx_to_remove])
        )
        kept_ids = [i for i in inference_state["obj_ids"] if i != obj_id]
        kept_old_inds = [inference_state["obj_id_to_idx"][i] for i in kept_ids]
        inference_state["output_dict_per_obj"][obj_idx_to_remove][NON_COND].clear()  # frees stored entries
        # Re-index in place, so references to the session's containers stay valid.
        inference_state["obj_id_to_idx"].clear()
        inference_state["obj_id_to_idx"].update((i, new) for new, i in enumerate(kept_ids))
        inference_state["obj_idx_to_id"].clear()
        inference_state["obj_idx_to_id"].update(enumerate(kept_ids))
        inference_state["obj_ids"] = kept_ids
        for key in self.per_object_state_keys:
            container = inference_state[key]
            kept = [container[old_idx] for old_idx in kept_old_inds]
            container.clear()
            container.update(enumerate(kept))

        if need_output:
            for frame_idx in prompted_frames:
                is_cond = self._any_temp_cond_output(inference_state, frame_idx)
                _, _, video_res_masks = self._frame_output(inference_state, frame_idx, is_cond)
                updated_frames.append((frame_idx, video_res_masks))
        return inference_state["obj_ids"], updated_frames

    def drop_memories_near(self, inference_state: InferenceState, obj_idx: int, frame_idx: int) -> None:
        """Drop one object's tracked memories within ``num_maskmem`` strided frames of a prompted frame.

        Those memories may still show the object as it was before a correction and would feed
        the model conflicting evidence.
        """
        radius = self.memory_temporal_stride_for_eval * self.num_maskmem
        non_cond = inference_state["output_dict_per_obj"][obj_idx][NON_COND]
        for t in range(frame_idx - radius, frame_idx + radius + 1):
            non_cond.pop(t, None)

    # ------------------------------------------------------------------ per-frame model calls

    def _get_image_feature(
        self, inference_state: InferenceState, frame_idx: int, batch_size: int
    ) -> tuple[Tensor, dict[str, Any], list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Backbone features of a frame, expanded (without copying) to ``batch_size`` tracks.

        Returns ``(image, backbone_out, vision_feats, vision_pos_embeds, feat_sizes)`` as
        :meth:`_prepare_backbone_features` does, with the image first. The features of the most
        recently used frame are cached, so prompting or tracking several objects on a frame
        runs the image encoder once.
        """
        image, backbone_out = inference_state["cached_features"].get(frame_idx, (None, None))
        if backbone_out is None:
            device = inference_state["device"]
            image = inference_state["images"][frame_idx].to(device).float().unsqueeze(0)
            backbone_out = self.forward_image(image)
            inference_state["cached_features"] = {frame_idx: (image, backbone_out)}
        expanded_out = {
            "backbone_fpn": [feat.expand(batch_size, -1, -1, -1) for feat in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [pos.expand(batch_size, -1, -1, -1) for pos in backbone_out["vision_pos_enc"]],
        }
        features = self._prepare_backbone_features(expanded_out)
        return (image.expand(batch_size, -1, -1, -1), *features)

    def _store_memory(self, inference_state: InferenceState, maskmem_features: Tensor) -> Tensor:
        """Convert a new spatial memory to the session's storage dtype and device."""
        maskmem_features = maskmem_features.to(self.maskmem_storage_dtype)
        return maskmem_features.to(inference_state["storage_device"], non_blocking=True)

    def postprocess_masks(self, pred_masks: Tensor) -> Tensor:
        """Clean-up of predicted low-res logits before output (hole filling when ``fill_hole_area > 0``)."""
        if self.fill_hole_area > 0:
            return fill_holes_in_mask_scores(pred_masks, self.fill_hole_area)
        return pred_masks

    def _run_single_frame_inference(
        self,
        inference_state: InferenceState,
        output_dict: dict[str, dict[int, FrameOutput]],
        frame_idx: int,
        batch_size: int,
        is_init_cond_frame: bool,
        point_inputs: Optional[dict[str, Tensor]],
        mask_inputs: Optional[Tensor],
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: Optional[Tensor] = None,
    ) -> tuple[FrameOutput, Tensor]:
        """Predict masks on one frame from its prompts and the memories in ``output_dict``.

        Returns ``(compact_out, pred_masks)``: the compact output to store in the session
        (memory in the storage dtype/device) and the low-res logits on the compute device.
        """
        if point_inputs is not None and mask_inputs is not None:
            raise ValueError("a frame's prompt is either points or a mask, not both")
        _, _, current_vision_feats, current_vision_pos_embeds, feat_sizes = self._get_image_feature(
            inference_state, frame_idx, batch_size
        )
        current_out = self.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=current_vision_feats,
            current_vision_pos_embeds=current_vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            num_frames=inference_state["num_frames"],
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        maskmem_features = current_out["maskmem_features"]
        if maskmem_features is not None:
            maskmem_features = self._store_memory(inference_state, maskmem_features)
        pred_masks = self.postprocess_masks(current_out["pred_masks"])
        compact_out = {
            "maskmem_features": maskmem_features,
            "maskmem_pos_enc": self._get_maskmem_pos_enc(inference_state, current_out),
            "pred_masks": pred_masks.to(inference_state["storage_device"], non_blocking=True),
            # pointers are tiny and read on every frame, so they stay on the compute device
            "obj_ptr": current_out["obj_ptr"],
            "object_score_logits": current_out["object_score_logits"],
        }
        return compact_out, pred_masks

    def _run_memory_encoder(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        batch_size: int,
        high_res_masks: Tensor,
        object_score_logits: Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[Tensor, list[Tensor]]:
        """Encode a frame's (final) high-res mask logits into a memory for the session.

        Returns ``(maskmem_features, maskmem_pos_enc)`` in storage form.
        """
        _, _, current_vision_feats, _, feat_sizes = self._get_image_feature(
            inference_state, frame_idx, batch_size
        )
        maskmem_features, maskmem_pos_enc = self._encode_new_memory(
            current_vision_feats=current_vision_feats,
            feat_sizes=feat_sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits,
            is_mask_from_pts=is_mask_from_pts,
        )
        maskmem_features = self._store_memory(inference_state, maskmem_features)
        maskmem_pos_enc = self._get_maskmem_pos_enc(inference_state, {"maskmem_pos_enc": maskmem_pos_enc})
        return maskmem_features, maskmem_pos_enc

    def _get_maskmem_pos_enc(
        self, inference_state: InferenceState, current_out: FrameOutput
    ) -> Optional[list[Tensor]]:
        """The memory positional encoding, shared by all frames and objects.

        One single-track copy is kept in ``inference_state["constants"]`` and expanded to the
        batch size of ``current_out``; returns None when ``current_out`` has no memory.
        """
        pos_enc = current_out["maskmem_pos_enc"]
        if pos_enc is None:
            return None
        constants = inference_state["constants"]
        if "maskmem_pos_enc" not in constants:
            constants["maskmem_pos_enc"] = [level[0:1].clone() for level in pos_enc]
        return self._maskmem_pos_enc(inference_state, pos_enc[0].size(0))

    def memory_pos_enc(self, inference_state: InferenceState) -> Tensor:
        """Spatial positional encoding ``[1, C_mem, h, w]`` of every memory frame of the session."""
        return self._maskmem_pos_enc(inference_state, 1)[-1]

    def _maskmem_pos_enc(self, inference_state: InferenceState, batch_size: int) -> list[Tensor]:
        """The session's memory positional encoding (all levels) expanded to ``batch_size`` rows."""
        constants = inference_state["constants"]
        if "maskmem_pos_enc" not in constants:
            raise RuntimeError("no memory has been encoded in this session yet (prompt a frame first)")
        return [level.expand(batch_size, -1, -1, -1) for level in constants["maskmem_pos_enc"]]


def _check_in_frame(what: str, xy: Tensor, limits: tuple[float, float], space: str) -> None:
    """Every ``(x, y)`` row of ``xy`` lies inside ``[0, limits[0]] x [0, limits[1]]``."""
    if xy.numel() == 0:
        return
    if not torch.isfinite(xy).all():
        raise ValueError(f"{what} must be finite numbers, got {xy.tolist()}")
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= limits[0]) & (xy[:, 1] >= 0) & (xy[:, 1] <= limits[1])
    if not inside.all():
        outside = xy[~inside].tolist()
        raise ValueError(f"{what} {outside} lie outside the frame; coordinates are in {space}")


def _clone_tensors(value: Any) -> Any:
    """Copy every tensor in a (nested) tuple/list/dict output, leaving other values as they are."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    return value


def _cloning_outputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a compiled function so its outputs are fresh tensors (compiled graphs may reuse buffers)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _clone_tensors(fn(*args, **kwargs))

    return wrapper


class SAM2VideoPredictorVOS(SAM2VideoPredictor):
    """Video predictor tuned for semi-supervised VOS: the heavy modules are ``torch.compile``d.

    Compilation is on by default only where it pays off and is supported (CUDA available);
    pass ``compile_components`` to force it on or off. Uncompiled, the class computes exactly what
    :class:`SAM2VideoPredictor` computes.
    """

    def __init__(self, *args: Any, compile_components: Optional[bool] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if compile_components is None:
            compile_components = torch.cuda.is_available()
        if compile_components:
            self._compile_all_components()

    def _compile_all_components(self) -> None:
        """Compile memory encoder, memory attention, prompt encoder and mask decoder."""
        # Only the memory attention sees a varying number of memory tokens, hence dynamic shapes;
        # the SAM heads lose accuracy when compiled with dynamic shapes.
        for module, dynamic in (
            (self.memory_encoder, False),
            (self.memory_attention, True),
            (self.sam_prompt_encoder, False),
            (self.sam_mask_decoder, False),
        ):
            compiled = torch.compile(module.forward, mode="max-autotune", fullgraph=True, dynamic=dynamic)
            module.forward = _cloning_outputs(compiled)

    def forward_image(self, img_batch: Tensor) -> dict[str, Any]:
        """:meth:`SAM2Base.forward_image` with feature maps copied out of the (compiled) encoder's buffers."""
        backbone_out = super().forward_image(img_batch)
        backbone_out["backbone_fpn"] = [feat.clone() for feat in backbone_out["backbone_fpn"]]
        backbone_out["vision_pos_enc"] = [pos.clone() for pos in backbone_out["vision_pos_enc"]]
        return backbone_out
