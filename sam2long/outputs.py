"""The second pass of a run: the tracked masks, read back in frame order, turned into the files
people look at (``sam2long segment`` and ``sam2long demo``).

Propagation emits frames in processing order (forward, reverse or both), so :func:`sam2long.pipeline.track`
first stores each tracker's masks as per-object PNGs; :func:`write_outputs` then reads them frame by
frame (memory bounded by one frame whatever the video length) and writes::

    palette/<frame>.png     all objects in one palette PNG (DAVIS colours)
    overlay.mp4             objects drawn over the frames
    masks_rle.json          COCO RLE per frame and object
    compare.mp4             with a comparison tracker: both side by side

The abort rule (one, for every writer of a pass): the writers are opened in one
:class:`contextlib.ExitStack`; on an exception every open writer is aborted, so no video or JSON is
left behind, not even half-written or under a temporary name (PNGs are atomic file by file, see
:mod:`sam2long.mask_io`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from sam2.utils.frame_sources import FrameSource
from sam2long.export import CocoRleWriter, OverlayVideoWriter, PalettePngWriter, SideBySideWriter
from sam2long.mask_io import read_mask
from sam2long.pipeline import TrackResult


def read_frame_masks(
    masks_dir: Path, obj_ids: Sequence[int], frame_name: str, size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Per-object masks of one frame from ``masks/<obj_id:03d>/<frame>.png`` (empty where absent)."""
    masks = {}
    for obj_id in obj_ids:
        path = masks_dir / f"{obj_id:03d}" / f"{frame_name}.png"
        masks[obj_id] = read_mask(path) > 0 if path.is_file() else np.zeros(size, dtype=bool)
    return masks


def result_masks(source: FrameSource, result: TrackResult, frame_idx: int) -> dict[int, np.ndarray]:
    """A tracker's stored masks of frame ``frame_idx`` of ``source``."""
    return read_frame_masks(result.masks_dir, result.obj_ids, source.frame_names[frame_idx], source.size)


def write_outputs(
    source: FrameSource,
    result: TrackResult,
    out_dir: Path,
    fps: float,
    frames: Sequence[int],
    compare: Optional[TrackResult] = None,
    on_frame: Optional[Callable[[int], None]] = None,
) -> None:
    """Palette PNGs, the overlay video and COCO RLE of ``result`` (and, with ``compare``, the
    side-by-side video, ``compare`` on the left) over ``frames`` in frame order; ``on_frame`` is
    told each frame written (progress)."""
    height, width = size = tuple(source.size)
    palette = PalettePngWriter(out_dir / "palette", size=size)
    with contextlib.ExitStack() as writers:
        rle = writers.enter_context(CocoRleWriter(out_dir / "masks_rle.json", height, width))
        overlay = writers.enter_context(OverlayVideoWriter(out_dir / "overlay.mp4", fps, size))
        side = None
        if compare is not None:
            side = writers.enter_context(
                SideBySideWriter(out_dir / "compare.mp4", fps, size, compare.name, result.name)
            )
        for frame_idx in frames:
            name = source.frame_names[frame_idx]
            masks = result_masks(source, result, frame_idx)
            image = source.get(frame_idx)
            palette.write(name, masks)
            rle.write(frame_idx, name, masks)
            overlay.write(image, masks)
            if side is not None:
                side.write(image, result_masks(source, compare, frame_idx), masks, frame_idx)
            if on_frame is not None:
                on_frame(frame_idx)
