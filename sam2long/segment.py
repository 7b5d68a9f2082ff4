"""One video end to end: prompts in, masks, overlay video, RLE and a summary out (``sam2long segment``).

Propagation yields frames in processing order (forward, reverse or both), so masks are first written
as per-object PNGs (``masks/<obj_id:03d>/<frame>.png``, every file atomic) as they are emitted; a
second pass then reads them in frame order and writes the palette PNGs, the overlay video and the
COCO-RLE JSON. Memory stays bounded by one frame whatever the video length. With a comparison
tracker (SAM 2 next to SAM2Long) its masks go to ``sam2/masks/`` and a side-by-side video is written.
With ``max_frames`` each direction is bounded (:func:`propagate`) and every output covers only the
tracked span (:func:`output_frames`).

Output folder::

    masks/<obj_id:03d>/<frame>.png   per-object masks (0/1)
    palette/<frame>.png              all objects in one palette PNG (DAVIS colours)
    overlay.mp4                      H.264, input size and fps, objects coloured with contours and ids
    masks_rle.json                   COCO RLE per frame and object (pycocotools)
    compare.mp4, sam2/masks/...      with a comparison tracker
    summary.json                     frames, fps, device, model, tracker settings, timings,
                                     detector re-prompts (frame, object, box, score)

With a box source (``--detector``) lost objects are re-prompted during the forward pass
(:mod:`sam2long.reprompt`). A live stream (:func:`track_live`) is tracked in one pass instead: frames
cannot be read twice, so the overlay is drawn as masks come out, at most ``max_lag`` frames late.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.frame_sources import FrameSource
from sam2long.export import (
    CocoRleWriter,
    OverlayVideoWriter,
    PalettePngWriter,
    PerObjectPngWriter,
    SideBySideWriter,
    draw_overlay,
    write_summary,
)
from sam2long.live import LiveStreamSource
from sam2long.mask_io import read_mask
from sam2long.prompts import Prompt, apply_prompts
from sam2long.reprompt import BoxSource, Reprompter, RepromptPolicy, propagate_with_reprompts, reprompt_log

DIRECTIONS = ("forward", "reverse", "both")


@dataclass
class TrackResult:
    """What one tracker produced for a video."""

    name: str
    masks_dir: Path
    frames_tracked: int = 0
    seconds: float = 0.0
    obj_ids: list[int] = field(default_factory=list)
    reprompts: Optional[list[dict]] = None  # with a detector: every re-prompt (frame, object, box, score)
    detector_queries: int = 0
    first_frame: Optional[int] = None  # smallest and largest frame index tracked (None: no frame)
    last_frame: Optional[int] = None
    visible: set[int] = field(default_factory=set)  # objects with a non-empty mask on some frame

    def add_frame(self, frame_idx: int, masks: dict[int, np.ndarray]) -> None:
        """Count one tracked frame and note which objects it shows."""
        self.frames_tracked += 1
        self.first_frame = frame_idx if self.first_frame is None else min(self.first_frame, frame_idx)
        self.last_frame = frame_idx if self.last_frame is None else max(self.last_frame, frame_idx)
        self.visible.update(o for o, mask in masks.items() if o not in self.visible and mask.any())

    @property
    def empty_objects(self) -> list[int]:
        """Objects whose mask is empty on every tracked frame."""
        return [obj_id for obj_id in self.obj_ids if obj_id not in self.visible]

    def summary(self) -> dict:
        """This tracker's entry in the run summary."""
        entry = {
            "frames_tracked": self.frames_tracked,
            "seconds": round(self.seconds, 3),
            "fps": round(self.frames_tracked / self.seconds, 3) if self.seconds > 0 else None,
            "objects": self.obj_ids,
        }
        if self.reprompts is not None:
            entry.update(reprompts=self.reprompts, detector_queries=self.detector_queries)
        return entry


def max_frame_num_to_track(max_frames: Optional[int]) -> Optional[int]:
    """Upstream's ``max_frame_num_to_track`` for at most ``max_frames`` frames per direction, the
    start frame included (upstream counts the frames after it)."""
    if max_frames is None:
        return None
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    return max_frames - 1


def propagate(
    predictor: SAM2VideoPredictor, state: Any, direction: str, max_frames: Optional[int] = None
) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
    """Propagation in ``direction``: forward from the earliest prompted frame, reverse from the latest,
    or both (forward, then reverse from the earliest; that frame is yielded once). ``max_frames``
    bounds each direction to that many frames, its start frame included (``None``: to the video's end)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    limit = max_frame_num_to_track(max_frames)
    predictor.propagate_in_video_preflight(state)
    prompted = sorted({f for out in state["output_dict_per_obj"].values() for f in out["cond_frame_outputs"]})
    if direction in ("forward", "both"):
        yield from predictor.propagate_in_video(
            state, start_frame_idx=prompted[0], max_frame_num_to_track=limit
        )
    if direction == "reverse":
        yield from predictor.propagate_in_video(
            state, start_frame_idx=prompted[-1], max_frame_num_to_track=limit, reverse=True
        )
    if direction == "both":
        for item in predictor.propagate_in_video(
            state, start_frame_idx=prompted[0], max_frame_num_to_track=limit, reverse=True
        ):
            if item[0] != prompted[0]:
                yield item


def track(
    name: str,
    predictor: SAM2VideoPredictor,
    source: FrameSource,
    prompts: Sequence[Prompt],
    out_dir: Path,
    direction: str,
    score_thresh: float = 0.0,
    box_source: Optional[BoxSource] = None,
    policy: Optional[RepromptPolicy] = None,
    max_frames: Optional[int] = None,
) -> TrackResult:
    """Track ``prompts`` through ``source`` and write per-object mask PNGs as frames are emitted;
    with ``box_source`` (forward only) lost objects are re-prompted by ``policy``. ``max_frames``
    bounds each direction (see :func:`propagate`)."""
    result = TrackResult(name, out_dir / "masks")
    writer = PerObjectPngWriter(result.masks_dir)
    with torch.inference_mode():
        state = predictor.init_state(source)
        apply_prompts(predictor, state, prompts)
        start = time.perf_counter()
        if box_source is None:
            frames = propagate(predictor, state, direction, max_frames)
        else:
            if direction != "forward":
                raise ValueError(f"detector re-prompting runs forward only, not {direction!r}")
            reprompter = Reprompter(policy or RepromptPolicy())
            frames = propagate_with_reprompts(
                predictor,
                state,
                source,
                box_source,
                reprompter.policy,
                reprompter,
                max_frame_num_to_track=max_frame_num_to_track(max_frames),
            )
        for frame_idx, obj_ids, logits in frames:
            masks = (logits > score_thresh).cpu().numpy()[:, 0]
            per_object = {int(o): masks[i] for i, o in enumerate(obj_ids)}
            writer.write(source.frame_names[frame_idx], per_object)
            result.add_frame(frame_idx, per_object)
        result.seconds = time.perf_counter() - start
        result.obj_ids = [int(i) for i in state["obj_ids"]]
        if box_source is not None:
            result.reprompts, result.detector_queries = reprompt_log(reprompter), reprompter.queries
    return result


def track_live(
    name: str,
    predictor: SAM2VideoPredictor,
    source: LiveStreamSource,
    prompts: Sequence[Prompt],
    out_dir: Optional[Path],
    fps: float,
    score_thresh: float = 0.0,
    show: Optional[Callable[[np.ndarray], bool]] = None,
) -> TrackResult:
    """One pass over a live stream: prompts are given when their frame arrives (objects may join
    mid-stream), each output frame is drawn at once into ``out_dir/overlay.mp4`` and per-object PNGs
    and/or handed to ``show`` (which returns False to stop)."""
    result = TrackResult(name, (out_dir or Path(".")) / "masks")
    by_frame: dict[int, list[Prompt]] = {}
    for prompt in prompts:
        by_frame.setdefault(prompt.frame_idx, []).append(prompt)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        overlay = writer = None
        if out_dir is not None:
            writer = PerObjectPngWriter(result.masks_dir)
            overlay = stack.enter_context(OverlayVideoWriter(out_dir / "overlay.mp4", fps, source.size))
        state = predictor.init_state(source)
        apply_prompts(predictor, state, by_frame.pop(0, []))
        start = time.perf_counter()

        def before_frame(frame_idx: int) -> None:
            apply_prompts(predictor, state, by_frame.pop(frame_idx, []))

        for frame_idx, obj_ids, logits in predictor.propagate_in_video(state, before_frame=before_frame):
            masks = (logits > score_thresh).cpu().numpy()[:, 0]
            per_object = {int(o): masks[i] for i, o in enumerate(obj_ids)}
            frame = source.get(frame_idx)
            if writer is not None:
                writer.write(source.frame_names[frame_idx], per_object)
                overlay.write(frame, per_object)
            result.add_frame(frame_idx, per_object)
            if show is not None and not show(draw_overlay(frame, per_object)):
                break
        result.seconds = time.perf_counter() - start
        result.obj_ids = [int(i) for i in state["obj_ids"]]
    return result


def read_frame_masks(masks_dir: Path, obj_ids: Sequence[int], frame_name: str, size: tuple[int, int]) -> dict:
    """Per-object masks of one frame from ``masks/<obj_id:03d>/<frame>.png`` (empty where absent)."""
    masks = {}
    for obj_id in obj_ids:
        path = masks_dir / f"{obj_id:03d}" / f"{frame_name}.png"
        masks[obj_id] = read_mask(path) > 0 if path.is_file() else np.zeros(size, dtype=bool)
    return masks


def output_frames(results: Sequence[TrackResult], num_frames: int, max_frames: Optional[int]) -> range:
    """The frames a run writes: every frame of the video, or with ``max_frames`` the span the
    trackers tracked (every frame again if they tracked none)."""
    tracked = [r for r in results if r.first_frame is not None]
    if max_frames is None or not tracked:
        return range(num_frames)
    return range(min(r.first_frame for r in tracked), max(r.last_frame for r in tracked) + 1)


def write_outputs(
    source: FrameSource,
    result: TrackResult,
    out_dir: Path,
    fps: float,
    compare: Optional[TrackResult] = None,
    frames: Optional[Sequence[int]] = None,
) -> None:
    """Second pass in frame order over ``frames`` (default: all): palette PNGs, the overlay video,
    COCO RLE (and the comparison video). On an error no video or RLE file is left half-written."""
    height, width = source.size
    size = (height, width)
    palette = PalettePngWriter(out_dir / "palette")
    with contextlib.ExitStack() as stack:
        rle = stack.enter_context(CocoRleWriter(out_dir / "masks_rle.json", height, width))
        overlay = stack.enter_context(OverlayVideoWriter(out_dir / "overlay.mp4", fps, size))
        side = None
        if compare is not None:
            side = stack.enter_context(
                SideBySideWriter(
                    out_dir / "compare.mp4", fps, size, left_title=compare.name, right_title=result.name
                )
            )
        for frame_idx in range(len(source)) if frames is None else frames:
            name = source.frame_names[frame_idx]
            masks = read_frame_masks(result.masks_dir, result.obj_ids, name, size)
            frame = source.get(frame_idx)
            palette.write(name, masks)
            rle.write(frame_idx, name, masks)
            overlay.write(frame, masks)
            if side is not None:
                side.write(
                    frame, read_frame_masks(compare.masks_dir, compare.obj_ids, name, size), masks, frame_idx
                )


def summarize(
    path: Path,
    source: FrameSource,
    fps: float,
    results: Sequence[TrackResult],
    frames: Optional[Sequence[int]] = None,
    **settings: Any,
) -> None:
    """The run summary JSON; ``frames`` are the frames written (default: all)."""
    frames = range(len(source)) if frames is None else frames
    write_summary(
        path,
        frames=len(frames),
        frame_range=[frames[0], frames[-1]] if len(frames) else None,
        video_frames=len(source),
        frame_size=list(source.size),
        fps=fps,
        trackers={r.name: r.summary() for r in results},
        **settings,
    )
