"""Track a session with a video predictor and emit per-frame masks: the one tracking loop of the
application layer (``sam2long segment`` file and live, ``sam2long demo``, ``sam2long-vos``).

:func:`track` runs a predictor over a session whose prompts (or masks) the caller has added, in a
direction (forward, reverse or both, :func:`propagate`), at most ``max_frames`` per direction,
optionally re-prompting lost objects from a detector (:class:`Reprompting`). It yields one
:class:`TrackedFrame` per output frame (binary numpy masks per object) and keeps what the run did in
one :class:`TrackResult` (frames, objects, timing, re-prompts). With ``result.masks_dir`` set, every
frame's masks are also stored there as per-object PNGs (``<obj_id:03d>/<frame>.png``, atomic), the
store that :mod:`sam2long.outputs` reads back in its second pass.

Only the predictors' public API is used: ``propagate_in_video`` and the session's ``obj_ids``. The
caller knows which frames it prompted and says so (``prompted_frames``) where the direction needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from sam2.session import InferenceSession
from sam2.utils.frame_sources import FrameSource
from sam2long.export import PerObjectPngWriter
from sam2long.reprompt import BoxSource, Reprompter, RepromptPolicy, propagate_with_reprompts, reprompt_log

DIRECTIONS = ("forward", "reverse", "both")
Masks = dict[int, np.ndarray]


class TrackedFrame(NamedTuple):
    """One output frame: its index and every object's boolean ``(H, W)`` mask, by object id
    (a pair, so ``dict(frames)`` maps frame indices to masks)."""

    index: int
    masks: Masks

    @property
    def obj_ids(self) -> tuple[int, ...]:
        return tuple(self.masks)


@dataclass
class TrackResult:
    """What one tracker did on a video: the frames it emitted, its objects, how long it took, the
    detector's re-prompts, and where its per-object mask PNGs are (``masks_dir``, None: not stored)."""

    name: str
    masks_dir: Optional[Path] = None
    obj_ids: tuple[int, ...] = ()
    seconds: float = 0.0
    reprompts: Optional[list[dict]] = None  # with a detector: every re-prompt (frame, object, box, score)
    detector_queries: int = 0
    tracked: set[int] = field(default_factory=set)  # frame indices emitted
    visible: set[int] = field(default_factory=set)  # objects with a non-empty mask on some frame

    def add_frame(self, frame: TrackedFrame) -> None:
        """Count one emitted frame and note which objects it shows."""
        self.tracked.add(frame.index)
        self.visible.update(o for o, mask in frame.masks.items() if o not in self.visible and mask.any())

    @property
    def frames(self) -> tuple[int, ...]:
        """The tracked frame indices, in frame order."""
        return tuple(sorted(self.tracked))

    @property
    def frames_tracked(self) -> int:
        return len(self.tracked)

    @property
    def first_frame(self) -> Optional[int]:
        """Smallest tracked frame index (None: no frame)."""
        return min(self.tracked, default=None)

    @property
    def last_frame(self) -> Optional[int]:
        """Largest tracked frame index (None: no frame)."""
        return max(self.tracked, default=None)

    @property
    def empty_objects(self) -> list[int]:
        """Objects whose mask is empty on every tracked frame."""
        return [obj_id for obj_id in self.obj_ids if obj_id not in self.visible]

    def summary(self) -> dict:
        """This tracker's entry in a run summary."""
        entry = {
            "frames_tracked": self.frames_tracked,
            "seconds": round(self.seconds, 3),
            "fps": round(self.frames_tracked / self.seconds, 3) if self.seconds > 0 else None,
            "objects": list(self.obj_ids),
        }
        if self.reprompts is not None:
            entry.update(reprompts=self.reprompts, detector_queries=self.detector_queries)
        return entry


@dataclass(frozen=True)
class Reprompting:
    """Re-prompt lost objects with boxes of ``box_source`` on the frames of ``source`` (forward only;
    see :mod:`sam2long.reprompt`)."""

    source: FrameSource
    box_source: BoxSource
    policy: RepromptPolicy = field(default_factory=RepromptPolicy)


def max_frame_num_to_track(max_frames: Optional[int]) -> Optional[int]:
    """Upstream's ``max_frame_num_to_track`` for at most ``max_frames`` frames per direction, the
    start frame included (upstream counts the frames after it)."""
    if max_frames is None:
        return None
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    return max_frames - 1


def propagate(
    predictor: Any,
    state: InferenceSession,
    direction: str = "forward",
    max_frames: Optional[int] = None,
    prompted_frames: Sequence[int] = (),
    start_frame: Optional[int] = None,
    **propagate_kw: Any,
) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
    """``propagate_in_video`` in ``direction``: forward from ``start_frame`` (default: the earliest
    prompted frame), reverse from the latest prompted frame, or both (forward, then reverse from
    the earliest; that frame is yielded once). ``max_frames`` bounds each direction to that many
    frames, its start frame included (``None``: to the video's end). ``propagate_kw`` go to
    ``propagate_in_video`` (``before_frame``, ``observer``, ``objects_join_at_first_prompt``)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction != "forward" and not prompted_frames:
        raise ValueError(f"propagating {direction!r} needs the prompted frames")
    limit = max_frame_num_to_track(max_frames)
    first = min(prompted_frames) if start_frame is None and prompted_frames else start_frame
    if direction in ("forward", "both"):
        yield from predictor.propagate_in_video(
            state, start_frame_idx=first, max_frame_num_to_track=limit, **propagate_kw
        )
    if direction == "reverse":
        last = max(prompted_frames)
        yield from predictor.propagate_in_video(
            state, start_frame_idx=last, max_frame_num_to_track=limit, reverse=True, **propagate_kw
        )
    if direction == "both":
        for item in predictor.propagate_in_video(
            state, start_frame_idx=first, max_frame_num_to_track=limit, reverse=True, **propagate_kw
        ):
            if item[0] != first:
                yield item


def track(
    predictor: Any,
    state: InferenceSession,
    result: TrackResult,
    *,
    frame_names: Sequence[str] = (),
    direction: str = "forward",
    max_frames: Optional[int] = None,
    prompted_frames: Sequence[int] = (),
    start_frame: Optional[int] = None,
    score_thresh: float = 0.0,
    reprompting: Optional[Reprompting] = None,
    logits_filter: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    **propagate_kw: Any,
) -> Iterator[TrackedFrame]:
    """Propagate ``state`` (prompts already added) and yield every output frame's masks
    (``logits > score_thresh``, after ``logits_filter`` if given), recording the run in ``result``.

    With ``result.masks_dir`` each frame's masks are written there as per-object PNGs named by
    ``frame_names``. With ``reprompting`` (forward only) lost objects get detector box prompts.
    ``result.seconds`` covers propagation and the caller's work on the frames; ``obj_ids`` and the
    re-prompts are filled in when the iteration ends (a caller that stops early closes the
    iterator, e.g. with :func:`contextlib.closing`).
    """
    store = None
    if result.masks_dir is not None:
        store = PerObjectPngWriter(result.masks_dir, size=(state.video_height, state.video_width))
    reprompter = None
    if reprompting is None:
        frames = propagate(
            predictor, state, direction, max_frames, prompted_frames, start_frame, **propagate_kw
        )
    else:
        if direction != "forward":
            raise ValueError(f"detector re-prompting runs forward only, not {direction!r}")
        reprompter = Reprompter(reprompting.policy)
        frames = propagate_with_reprompts(
            predictor,
            state,
            reprompting.source,
            reprompting.box_source,
            reprompter.policy,
            reprompter,
            max_frame_num_to_track=max_frame_num_to_track(max_frames),
            **propagate_kw,
        )
    start = time.perf_counter()
    try:
        for frame_idx, obj_ids, logits in frames:
            if logits_filter is not None:
                logits = logits_filter(logits)
            binary = (logits > score_thresh).cpu().numpy()[:, 0]
            frame = TrackedFrame(int(frame_idx), {int(o): binary[i] for i, o in enumerate(obj_ids)})
            if store is not None:
                store.write(frame_names[frame.index], frame.masks)
            result.add_frame(frame)
            yield frame
            result.seconds = time.perf_counter() - start
    finally:
        result.seconds = time.perf_counter() - start
        result.obj_ids = tuple(int(i) for i in state.obj_ids)
        if reprompter is not None:
            result.reprompts, result.detector_queries = reprompt_log(reprompter), reprompter.queries
