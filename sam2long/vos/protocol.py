"""How a video's input masks are given to a predictor and its objects tracked (upstream's protocols).

* :func:`add_input_masks`: the input masks, in upstream's order;
* :func:`track_video`: the default protocol (all objects from the earliest input frame) or,
  with ``later_objects``, :func:`track_objects_appearing_later`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Optional

import numpy as np

from sam2.modeling.sam2_utils import apply_non_overlapping_constraints
from sam2.sam2_video_predictor import InferenceState, SAM2VideoPredictor
from sam2long.pipeline import TrackedFrame, TrackResult, track
from sam2long.vos.dataset import MaskInputs


def add_input_masks(
    predictor: SAM2VideoPredictor,
    state: InferenceState,
    inputs: MaskInputs,
    obj_ids: Sequence[int],
    frame_major: bool,
) -> None:
    """Give the input masks of ``obj_ids`` to the predictor, in upstream's order: frame by frame
    (default protocol, ``frame_major``) or object by object (objects appearing later)."""
    pairs = sorted((frame_idx, obj_id) for obj_id in obj_ids for frame_idx in inputs.masks[obj_id])
    if not frame_major:
        pairs.sort(key=lambda pair: (pair[1], pair[0]))
    for frame_idx, obj_id in pairs:
        predictor.add_new_mask(
            inference_state=state, frame_idx=frame_idx, obj_id=obj_id, mask=inputs.masks[obj_id][frame_idx]
        )


def track_objects_appearing_later(
    predictor: SAM2VideoPredictor,
    state: InferenceState,
    inputs: MaskInputs,
    score_thresh: float,
    non_overlap: bool,
    result: TrackResult,
) -> Iterator[TrackedFrame]:
    """Upstream's ``vos_separate_inference_per_object`` in one batched session: each object joins
    the propagation on its first input frame and is absent before it (no compute spent on it
    there); all objects share one image-encoder pass per frame.

    Objects are tracked independently, so this equals one run per object (exactly for SAM 2, up
    to float rounding for SAM2Long's batched pathways). With ``non_overlap`` the model's
    non-overlap rule is applied across all objects of a frame. Masks are binarized as frames are
    emitted; nothing is buffered.
    """
    object_ids = inputs.object_ids
    add_input_masks(predictor, state, inputs, object_ids, frame_major=False)
    start = min(inputs.first_frame(obj_id) for obj_id in object_ids)
    empty = np.zeros((state.video_height, state.video_width), dtype=bool)
    for frame_idx in range(start):
        yield TrackedFrame(frame_idx, {obj_id: empty for obj_id in object_ids})
    yield from track(
        predictor,
        state,
        result,
        start_frame=start,
        score_thresh=score_thresh,
        logits_filter=apply_non_overlapping_constraints if non_overlap else None,
        objects_join_at_first_prompt=True,
    )


def track_video(
    predictor: SAM2VideoPredictor,
    state: InferenceState,
    inputs: MaskInputs,
    score_thresh: float,
    later_objects: bool,
    non_overlap: bool,
    result: Optional[TrackResult] = None,
) -> Iterator[TrackedFrame]:
    """Yield ``(frame_idx, {obj_id: bool (H, W) mask})`` for every output frame of a video, tracked
    by :func:`sam2long.pipeline.track` (recorded in ``result``).

    Default protocol (upstream's ``vos_inference``): all objects are added on their input frames
    and tracked together from the earliest one; overlaps are resolved by the predictor (its
    ``non_overlap_masks`` setting), so ``non_overlap`` is unused. With ``later_objects``:
    :func:`track_objects_appearing_later`.
    """
    result = TrackResult("vos") if result is None else result
    if later_objects:
        yield from track_objects_appearing_later(predictor, state, inputs, score_thresh, non_overlap, result)
        return
    add_input_masks(predictor, state, inputs, inputs.object_ids, frame_major=True)
    yield from track(predictor, state, result, score_thresh=score_thresh)
