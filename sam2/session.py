"""A video session owned by the library: frames, objects with their prompts and outputs, and the
propagation in progress.

:class:`InferenceSession` is what :meth:`SAM2VideoPredictor.init_state` returns. Inside the library
everything uses its typed fields and the per-object :class:`ObjectState`. For SAM 2 users it is also a
read-only ``Mapping`` answering upstream 1.1.0's keys (``video_height``, ``video_width``,
``num_frames``, ``obj_ids``, ``images``, ``output_dict_per_obj`` ...) with views of the same
containers, so notebooks and scripts written against upstream's dict keep working.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sam2.engine import FrameOutput, PropagationCursor
from sam2.utils.output_store import OutputStore

#: upstream's names of the two halves of an object's outputs (the layout ``SAM2Base.track_step`` reads)
COND = "cond_frame_outputs"
NON_COND = "non_cond_frame_outputs"


@dataclass
class ObjectState:
    """One object of a session: its prompts and outputs per frame.

    ``cond_outputs`` are prompted (conditioning) frames, ``tracked_outputs`` tracked ones (a view of the
    session's :class:`~sam2.utils.output_store.OutputStore`); ``temp_*`` hold prompt results not yet
    consolidated (their memory is encoded when propagation starts). ``frames_tracked`` maps every
    frame the object was propagated on to whether that was in reverse.
    """

    obj_id: Any
    tracked_outputs: MutableMapping[int, FrameOutput]
    point_inputs: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    mask_inputs: dict[int, Tensor] = field(default_factory=dict)
    cond_outputs: dict[int, FrameOutput] = field(default_factory=dict)
    temp_cond_outputs: dict[int, FrameOutput] = field(default_factory=dict)
    temp_tracked_outputs: dict[int, FrameOutput] = field(default_factory=dict)
    frames_tracked: dict[int, bool] = field(default_factory=dict)

    def output_dict(self) -> dict[str, MutableMapping[int, FrameOutput]]:
        """The outputs in upstream's layout (what memory selection reads)."""
        return {COND: self.cond_outputs, NON_COND: self.tracked_outputs}

    def temp_output_dict(self) -> dict[str, dict[int, FrameOutput]]:
        return {COND: self.temp_cond_outputs, NON_COND: self.temp_tracked_outputs}

    def latest_output(self, frame_idx: int, is_cond: bool) -> Optional[FrameOutput]:
        """The most recent output on a frame: an unconsolidated prompt result (conditioning or
        correction, per ``is_cond``) first, then the conditioning output, then the tracked one."""
        temp = self.temp_cond_outputs if is_cond else self.temp_tracked_outputs
        out = temp.get(frame_idx)
        if out is None:
            out = self.cond_outputs.get(frame_idx)
        if out is None:
            out = self.tracked_outputs.get(frame_idx)
        return out

    def prompted_frames(self) -> list[int]:
        """Frames with clicks or a mask of this object."""
        return sorted(set(self.point_inputs) | set(self.mask_inputs))

    def clear_prompts_on(self, frame_idx: int) -> None:
        """Remove the object's clicks/mask on a frame: its prompted output there becomes an ordinary
        tracked output, and the frame counts as untracked again (a new prompt starts a fresh
        conditioning frame)."""
        for container in (
            self.point_inputs,
            self.mask_inputs,
            self.temp_cond_outputs,
            self.temp_tracked_outputs,
        ):
            container.pop(frame_idx, None)
        out = self.cond_outputs.pop(frame_idx, None)
        if out is not None:
            self.tracked_outputs[frame_idx] = out
            self.frames_tracked.pop(frame_idx, None)

    def clear(self) -> None:
        """Forget every prompt and output (the object itself stays)."""
        for container in (
            self.point_inputs,
            self.mask_inputs,
            self.cond_outputs,
            self.tracked_outputs,
            self.temp_cond_outputs,
            self.temp_tracked_outputs,
            self.frames_tracked,
        ):
            container.clear()


class InferenceSession(Mapping[str, Any]):
    """A video and the objects tracked in it (see the module docstring)."""

    def __init__(
        self,
        images: Any,
        video_height: int,
        video_width: int,
        device: torch.device,
        output_store: OutputStore,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
    ) -> None:
        self.images = images
        self.num_frames = len(images)
        self.video_height = video_height
        self.video_width = video_width
        self.device = device
        self.storage_device = torch.device("cpu") if offload_state_to_cpu else device
        self.offload_video_to_cpu = offload_video_to_cpu
        self.offload_state_to_cpu = offload_state_to_cpu
        self.output_store = output_store
        #: objects in order of appearance; an object's index in this list is its model-side index
        self.objects: list[ObjectState] = []
        #: backbone features of the most recently used frame: ``{frame_idx: backbone_out}``
        self.cached_features: dict[int, dict[str, Any]] = {}
        #: the memory positional encoding (identical for every frame and object), once computed
        self.maskmem_pos_enc: Optional[list[Tensor]] = None
        #: the propagation running on this session, if any
        self.propagation: Optional[PropagationCursor] = None

    # ------------------------------------------------------------------ objects

    @property
    def obj_ids(self) -> list[Any]:
        return [obj.obj_id for obj in self.objects]

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def obj_idx(self, obj_id: Any) -> Optional[int]:
        """Model-side index of a client object id, or None if the id is unknown."""
        for idx, obj in enumerate(self.objects):
            if obj.obj_id == obj_id:
                return idx
        return None

    def add_object(self, obj_id: Any) -> int:
        """Index of ``obj_id``, adding the object (with empty prompts and outputs) if it is new."""
        idx = self.obj_idx(obj_id)
        if idx is None:
            self.objects.append(ObjectState(obj_id, self.output_store.frames()))
            idx = len(self.objects) - 1
        return idx

    def remove_object(self, obj_idx: int) -> ObjectState:
        """Remove an object (its tracked outputs leave the store); later objects move down one index."""
        obj = self.objects.pop(obj_idx)
        obj.tracked_outputs.clear()
        return obj

    def reset(self) -> None:
        """Remove every object with its prompts and outputs."""
        for obj in self.objects:
            obj.clear()
        self.objects.clear()

    def has_temp_cond_output(self, frame_idx: int) -> bool:
        """Whether some object has an unconsolidated conditioning prompt result on a frame."""
        return any(frame_idx in obj.temp_cond_outputs for obj in self.objects)

    def latest_masks(self, frame_idx: int, is_cond: bool, fill_value: float) -> Tensor:
        """Every object's latest mask logits on a frame (see :meth:`ObjectState.latest_output`) as one
        ``(num_objects, 1, H, W)`` tensor at the video resolution; ``fill_value`` where an object has none."""
        size = (self.video_height, self.video_width)
        masks = torch.full(
            (self.num_objects, 1, *size), fill_value, dtype=torch.float32, device=self.storage_device
        )
        for obj_idx, obj in enumerate(self.objects):
            out = obj.latest_output(frame_idx, is_cond)
            if out is not None:
                logits = out["pred_masks"]
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                masks[obj_idx : obj_idx + 1] = logits
        return masks

    def share_memory_pos_enc(self, pos_enc: Optional[list[Tensor]]) -> Optional[list[Tensor]]:
        """A new memory's positional encoding as the session's one shared copy (it is the same for every
        frame and object), expanded to the memory's batch size; None for no memory."""
        if pos_enc is None:
            return None
        if self.maskmem_pos_enc is None:
            self.maskmem_pos_enc = [level[0:1].clone() for level in pos_enc]
        return self.memory_pos_enc(pos_enc[0].size(0))

    def memory_pos_enc(self, batch_size: int) -> list[Tensor]:
        """The memory positional encoding (all levels) expanded to ``batch_size`` rows."""
        if self.maskmem_pos_enc is None:
            raise RuntimeError("no memory has been encoded in this session yet (prompt a frame first)")
        return [level.expand(batch_size, -1, -1, -1) for level in self.maskmem_pos_enc]

    def is_live(self) -> bool:
        """Whether the frames come from a live stream (read once, length unknown)."""
        return bool(getattr(self.images, "live", False))

    def frame_available(self, frame_idx: int) -> bool:
        """Whether the video has ``frame_idx``: always, except for a live stream that ended before it
        (asking may wait for the stream to deliver the frame)."""
        has_frame = getattr(self.images, "has_frame", None)
        return True if has_frame is None else has_frame(frame_idx)

    # ------------------------------------------------------------------ upstream's keys

    def __getitem__(self, key: str) -> Any:
        view = _UPSTREAM_KEYS.get(key)
        if view is None:
            raise KeyError(key)
        return view(self)

    def __iter__(self) -> Iterator[str]:
        return iter(_UPSTREAM_KEYS)

    def __len__(self) -> int:
        return len(_UPSTREAM_KEYS)

    def __repr__(self) -> str:
        return (
            f"InferenceSession({self.num_frames} frames of {self.video_width}x{self.video_height}, "
            f"objects {self.obj_ids})"
        )


def _per_object(view: Callable[[ObjectState], Any]) -> Callable[[InferenceSession], dict[int, Any]]:
    return lambda session: {i: view(obj) for i, obj in enumerate(session.objects)}


#: upstream's session keys -> views of the typed fields (same containers, so in-place edits reach them)
_UPSTREAM_KEYS: dict[str, Callable[[InferenceSession], Any]] = {
    "images": lambda s: s.images,
    "num_frames": lambda s: s.num_frames,
    "offload_video_to_cpu": lambda s: s.offload_video_to_cpu,
    "offload_state_to_cpu": lambda s: s.offload_state_to_cpu,
    "video_height": lambda s: s.video_height,
    "video_width": lambda s: s.video_width,
    "device": lambda s: s.device,
    "storage_device": lambda s: s.storage_device,
    "point_inputs_per_obj": _per_object(lambda o: o.point_inputs),
    "mask_inputs_per_obj": _per_object(lambda o: o.mask_inputs),
    "cached_features": lambda s: s.cached_features,
    "constants": lambda s: {} if s.maskmem_pos_enc is None else {"maskmem_pos_enc": s.maskmem_pos_enc},
    "obj_id_to_idx": lambda s: OrderedDict((obj_id, i) for i, obj_id in enumerate(s.obj_ids)),
    "obj_idx_to_id": lambda s: OrderedDict(enumerate(s.obj_ids)),
    "obj_ids": lambda s: s.obj_ids,
    "output_dict_per_obj": _per_object(ObjectState.output_dict),
    "temp_output_dict_per_obj": _per_object(ObjectState.temp_output_dict),
    "frames_tracked_per_obj": _per_object(lambda o: {f: {"reverse": r} for f, r in o.frames_tracked.items()}),
    "output_store": lambda s: s.output_store,
    "propagation": lambda s: s.propagation,
}
