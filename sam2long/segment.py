"""One video end to end: prompts in, masks, overlay video, RLE and a summary out (``sam2long segment``).

Tracking is :func:`sam2long.pipeline.track`: masks are first written as per-object PNGs
(``masks/<obj_id:03d>/<frame>.png``, every file atomic) as they are emitted; the second pass,
:func:`sam2long.outputs.write_outputs`, then reads them in frame order and writes the palette PNGs,
the overlay video and the COCO-RLE JSON. Memory stays bounded by one frame whatever the video
length. With a comparison tracker (SAM 2 next to SAM2Long) its masks go to ``sam2/masks/`` and a
side-by-side video is written. With ``max_frames`` each direction is bounded
(:func:`sam2long.pipeline.propagate`) and every output covers only the tracked span
(:func:`output_frames`).

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sam2.utils.frame_sources import FrameSource
from sam2long.export import OverlayVideoWriter, draw_overlay, write_summary
from sam2long.live import LiveStreamSource
from sam2long.pipeline import Reprompting, TrackResult
from sam2long.pipeline import track as track_frames
from sam2long.prompts import Prompt, apply_prompts


def track(
    name: str,
    predictor: Any,
    source: FrameSource,
    prompts: Sequence[Prompt],
    out_dir: Path,
    direction: str,
    score_thresh: float = 0.0,
    reprompting: Optional[Reprompting] = None,
    max_frames: Optional[int] = None,
) -> TrackResult:
    """Track ``prompts`` through ``source`` and store per-object mask PNGs in ``out_dir/masks`` as
    frames are emitted; with ``reprompting`` (forward only) lost objects are re-prompted.
    ``max_frames`` bounds each direction (see :func:`sam2long.pipeline.propagate`)."""
    result = TrackResult(name, out_dir / "masks")
    with torch.inference_mode():
        state = predictor.init_state(source)
        apply_prompts(predictor, state, prompts)
        frames = track_frames(
            predictor,
            state,
            result,
            frame_names=source.frame_names,
            direction=direction,
            max_frames=max_frames,
            prompted_frames=[p.frame_idx for p in prompts],
            score_thresh=score_thresh,
            reprompting=reprompting,
        )
        for _ in frames:
            pass
    return result


def track_live(
    name: str,
    predictor: Any,
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
    result = TrackResult(name, None if out_dir is None else out_dir / "masks")
    by_frame: dict[int, list[Prompt]] = {}
    for prompt in prompts:
        by_frame.setdefault(prompt.frame_idx, []).append(prompt)
    with contextlib.ExitStack() as writers, torch.inference_mode():
        overlay = None
        if out_dir is not None:
            overlay = writers.enter_context(OverlayVideoWriter(out_dir / "overlay.mp4", fps, source.size))
        state = predictor.init_state(source)
        apply_prompts(predictor, state, by_frame.pop(0, []))

        def before_frame(frame_idx: int) -> None:
            apply_prompts(predictor, state, by_frame.pop(frame_idx, []))

        frames = writers.enter_context(
            contextlib.closing(
                track_frames(
                    predictor,
                    state,
                    result,
                    frame_names=source.frame_names,
                    score_thresh=score_thresh,
                    before_frame=before_frame,
                )
            )
        )
        for frame in frames:
            image = source.get(frame.index)
            if overlay is not None:
                overlay.write(image, frame.masks)
            if show is not None and not show(draw_overlay(image, frame.masks)):
                break
    return result


def output_frames(results: Sequence[TrackResult], num_frames: int, max_frames: Optional[int]) -> range:
    """The frames a run writes: every frame of the video, or with ``max_frames`` the span the
    trackers tracked (every frame again if they tracked none)."""
    tracked = [r for r in results if r.first_frame is not None]
    if max_frames is None or not tracked:
        return range(num_frames)
    return range(min(r.first_frame for r in tracked), max(r.last_frame for r in tracked) + 1)


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
