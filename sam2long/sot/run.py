"""Box-tracking inference: one sequence end to end (:func:`run_sequence`) and the resumable loop over
a shard of a dataset (:func:`run_sot`).

Protocol (SAMURAI's and the SAM2Long paper's): the first frame's ground-truth box is a box prompt on
frame 0; the tracker runs forward; each later frame's mask becomes its tight box ``(x, y, w, h)``
in pixels (:func:`mask_box`); frame 0 reports the given box, as OPE toolkits expect. A frame whose
mask is empty reports ``0,0,0,0`` (:data:`EMPTY_BOX`, SAMURAI's choice): GOT-10k's toolkit and
server and the LaSOT toolkit score it as IoU 0, and pytracking's analysis replaces it with the
previous box itself, so one file serves every evaluator honestly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sam2.utils.frame_sources import FrameSourceError
from sam2long.mask_io import TEMP_SUFFIX, temp_path
from sam2long.pipeline import TrackResult, track
from sam2long.sot.datasets import FrameFiles, SotInputError, SotSequence, load_sequence
from sam2long.sot.results import result_files, write_result
from sam2long.vos.dataset import DoneMarkers
from sam2long.vos.run import PeakMemory, Summary, pending

LOGGER = logging.getLogger("sam2long.sot")
EMPTY_BOX = np.zeros(4)
OBJ_ID = 1


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight box ``(x, y, w, h)`` of a boolean mask in pixels (:data:`EMPTY_BOX` if empty)."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return EMPTY_BOX.copy()
    rows = np.flatnonzero(mask.any(axis=1))
    return np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1], dtype=np.float64)


def prompt_box(seq: SotSequence, size: tuple[int, int]) -> np.ndarray:
    """The first box as a prompt ``(x0, y0, x1, y1)``, clipped to the image; a box that is not
    finite, has no area or lies outside the image is an error naming the sequence and frame."""
    height, width = size
    x, y, w, h = seq.init_box
    where = f"sequence {seq.name!r}, frame 0 ({seq.frames[0]})"
    if not np.isfinite(seq.init_box).all() or w <= 0 or h <= 0:
        raise SotInputError(f"{where}: the first box {seq.init_box.tolist()} has no area")
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise SotInputError(
            f"{where}: the first box {seq.init_box.tolist()} lies outside the {width}x{height} image"
        )
    return np.array([x0, y0, x1, y1], dtype=np.float32)


@dataclass(frozen=True)
class SequenceStats:
    """What one sequence run produced and cost."""

    frames: int
    empty_frames: int
    seconds: float
    fps: float
    peak_mem_bytes: Any
    peak_mem_kind: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def track_boxes(
    predictor: Any, seq: SotSequence, score_thresh: float = 0.0
) -> tuple[np.ndarray, list[float]]:
    """Track ``seq`` from its first box; returns the boxes ``(N, 4)`` and each frame's seconds
    (frame 0: the prompt). Masks become boxes as they are emitted; none is kept."""
    try:
        source = FrameFiles(seq.frames, seq.name)
    except FrameSourceError as error:
        raise SotInputError(f"sequence {seq.name!r}: {error}") from error
    box = prompt_box(seq, source.size)
    boxes, times = [], []
    with torch.inference_mode():
        state = predictor.init_state(video_path=source)
        last = time.perf_counter()
        predictor.add_new_points_or_box(inference_state=state, frame_idx=0, obj_id=OBJ_ID, box=box)
        frames = track(predictor, state, TrackResult(seq.name), score_thresh=score_thresh)
        for expected, frame in enumerate(frames):
            if frame.index != expected:
                raise RuntimeError(
                    f"sequence {seq.name!r}: frame {frame.index} emitted where {expected} was due"
                )
            boxes.append(seq.init_box if expected == 0 else mask_box(frame.masks[OBJ_ID]))
            now = time.perf_counter()
            times.append(now - last)
            last = now
        del state
    if len(boxes) != len(seq.frames):
        raise RuntimeError(f"sequence {seq.name!r}: {len(boxes)} of {len(seq.frames)} frames tracked")
    return np.asarray(boxes, dtype=np.float64), times


def run_sequence(
    predictor: Any, seq: SotSequence, out: Path, layout: str, device: torch.device, score_thresh: float
) -> tuple[SequenceStats, list[str]]:
    """Track one sequence and write its result files; returns its statistics and the files."""
    remove_leftovers(out, layout, seq.name)
    meter = PeakMemory(device)
    meter.reset()
    boxes, times = track_boxes(predictor, seq, score_thresh)
    files = write_result(out, layout, seq.name, boxes, times)
    seconds = float(sum(times))
    peak, kind = meter.read()
    stats = SequenceStats(
        frames=len(boxes),
        empty_frames=int((boxes[1:, 2:] == 0).any(axis=1).sum()),
        seconds=round(seconds, 3),
        fps=round(len(boxes) / seconds, 3) if seconds > 0 else None,
        peak_mem_bytes=peak,
        peak_mem_kind=kind,
    )
    return stats, files


def remove_leftovers(out: Path, layout: str, name: str) -> None:
    """Delete the temporary files a killed run left for sequence ``name`` (only its own: shards
    share the result folder and may be writing theirs)."""
    for relative in result_files(layout, name):
        target = Path(out) / relative
        stem = temp_path(target).name.rsplit(".", 2)[0]  # the temporary name without its random part
        if target.parent.is_dir():
            for leftover in target.parent.glob(f"{stem}.*{TEMP_SUFFIX}"):
                leftover.unlink(missing_ok=True)


class ResultMarkers(DoneMarkers):
    """Done markers whose files are relative to the result folder (sequences share it)."""

    def files_dir(self, video: str) -> Path:
        return self.output_dir


def run_sot(
    names: Sequence[str],
    dataset: str,
    root: Path,
    layout: str,
    out: Path,
    build_predictor: Callable[[], Any],
    markers: ResultMarkers,
    summary: Summary,
    fingerprint: dict[str, Any],
    device: torch.device,
    score_thresh: float = 0.0,
    resume: bool = True,
) -> int:
    """Run every sequence of ``names`` not already complete for ``fingerprint``; a failing one is
    logged and recorded while the others go on. Returns 1 if any failed, else 0."""
    todo = pending(names, markers, fingerprint, resume, summary)
    LOGGER.info(
        "%s: %d sequences, %d already complete, %d to run",
        dataset,
        len(names),
        len(names) - len(todo),
        len(todo),
    )
    summary.write()
    predictor = build_predictor() if todo else None
    for name in tqdm(todo, desc="sequences"):
        markers.clear(name)
        try:
            seq = load_sequence(dataset, root, name)
            stats, files = run_sequence(predictor, seq, out, layout, device, score_thresh)
        except Exception as error:  # one bad sequence must not stop the others
            message = f"{type(error).__name__}: {error}"
            LOGGER.error("sequence %r failed: %s", name, message)
            if not isinstance(error, SotInputError):
                LOGGER.error("%s", traceback.format_exc())
            summary.record(name, {"status": "failed", "error": message})
            continue
        markers.write(name, fingerprint, files, stats.as_dict())
        summary.record(name, {"status": "done", **stats.as_dict()})
    failures = summary.failures()
    for name, message in failures.items():
        LOGGER.error("  %s: %s", name, message)
    LOGGER.info("results in %s, summary in %s", out, summary.path)
    return 1 if failures else 0
