"""Running dataset VOS inference: one video end to end (:func:`run_video`), its peak memory
(:class:`PeakMemory`), the run summary (:class:`Summary`) and the resumable loop over the videos
of a shard (:func:`run_dataset`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.frame_sources import FrameSourceError, open_frame_source
from sam2long.export import PalettePngWriter, PerObjectPngWriter
from sam2long.mask_io import DAVIS_PALETTE, atomic_write_json, remove_temp_files
from sam2long.pipeline import TrackResult
from sam2long.vos.dataset import (
    DoneMarkers,
    MaskFolder,
    VosInputError,
    collect_inputs,
    resolve_video,
)
from sam2long.vos.protocol import track_video

LOGGER = logging.getLogger("sam2long.vos")


@dataclass
class PeakMemory:
    """Peak memory of one video: CUDA max-allocated bytes, or the process's peak RSS on CPU."""

    device: torch.device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)

    def read(self) -> tuple[Optional[int], str]:
        """``(bytes, kind)``; the kind says what was measured."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "rss_peak"
        import resource  # POSIX only; Linux reports VmHWM above

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024
        return int(peak) * scale, "rss_peak_since_start"


@dataclass
class RunOptions:
    """Per-video settings shared by all videos of a run."""

    base_video_dir: Path
    input_mask_dir: Path
    output_mask_dir: Path
    device: torch.device
    score_thresh: float = 0.0
    use_all_masks: bool = False
    per_obj_png_file: bool = False
    later_objects: bool = False
    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False
    stream_frames: bool = False

    @property
    def predictor_non_overlap(self) -> bool:
        """Whether the predictor itself keeps objects disjoint: single-PNG outputs, as upstream,
        except with objects appearing later, tracked in groups (see :attr:`tracker_non_overlap`)."""
        return not self.per_obj_png_file and not self.later_objects

    @property
    def tracker_non_overlap(self) -> bool:
        """Whether the later-objects protocol applies the non-overlap rule across its groups."""
        return self.later_objects and not self.per_obj_png_file

    def fingerprint(self) -> dict[str, Any]:
        """The settings here that change the output PNGs (with the model's, they gate resuming)."""
        return {
            "score_thresh": self.score_thresh,
            "use_all_masks": self.use_all_masks,
            "per_obj_png_file": self.per_obj_png_file,
            "track_object_appearing_later_in_video": self.later_objects,
        }

    def init_state_kwargs(self) -> dict[str, bool]:
        """Keyword arguments of ``predictor.init_state`` (flags passed only when on)."""
        kwargs = {"async_loading_frames": False}
        for flag in ("offload_video_to_cpu", "offload_state_to_cpu", "stream_frames"):
            if getattr(self, flag):
                kwargs[flag] = True
        return kwargs


@dataclass(frozen=True)
class VideoStats:
    """What one video run produced and cost."""

    frames: int
    objects: int
    seconds: float
    fps: Optional[float]
    peak_mem_bytes: Optional[int]
    peak_mem_kind: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_video(predictor: SAM2VideoPredictor, name: str, opts: RunOptions) -> tuple[VideoStats, list[str]]:
    """Track one video and write its masks; returns its statistics and the written files
    (relative to the video's output folder). Bad inputs raise :class:`VosInputError`."""
    meter = PeakMemory(opts.device)
    meter.reset()
    started = time.perf_counter()
    entry = resolve_video(opts.base_video_dir, name)
    out_dir = opts.output_mask_dir / entry.name
    remove_temp_files(out_dir)
    try:
        source = open_frame_source(entry.path)
    except FrameSourceError as error:
        raise VosInputError(f"video {name!r}: {error}") from error
    frame_names = source.frame_names
    folder = MaskFolder(
        root=opts.input_mask_dir / entry.name,
        video=name,
        per_obj_png_file=opts.per_obj_png_file,
        frame_size=tuple(source.size),
    )
    inputs = collect_inputs(folder, frame_names, opts.use_all_masks, opts.later_objects)

    files: list[str] = []
    with torch.inference_mode():  # the predictor applies its own precision (--dtype)
        try:
            state = predictor.init_state(video_path=source, **opts.init_state_kwargs())
        except FrameSourceError as error:
            raise VosInputError(f"video {name!r}: {error}") from error
        layout = PerObjectPngWriter if opts.per_obj_png_file else PalettePngWriter
        size = (state.video_height, state.video_width)
        writer = layout(out_dir, size=size, palette=inputs.palette or DAVIS_PALETTE)
        stream = track_video(
            predictor,
            state,
            inputs,
            score_thresh=opts.score_thresh,
            later_objects=opts.later_objects,
            non_overlap=opts.tracker_non_overlap,
            result=TrackResult(name),
        )
        frames_written = 0
        for frame_idx, per_obj in tqdm(stream, desc=name, total=len(frame_names), leave=False, position=1):
            written = writer.write(frame_names[frame_idx], per_obj)
            paths = written if isinstance(written, list) else [written]
            files.extend(path.relative_to(out_dir).as_posix() for path in paths)
            frames_written += 1
        del state
    if getattr(source, "damaged", False):
        # The decodable frames keep their masks; the video still counts as failed (no done-marker).
        raise VosInputError(
            f"video {name!r}: file {entry.path} is truncated or damaged; its last decodable frame is "
            f"{len(frame_names) - 1} (masks written for frames 0 to {len(frame_names) - 1})"
        )
    seconds = time.perf_counter() - started
    peak, peak_kind = meter.read()
    stats = VideoStats(
        frames=frames_written,
        objects=len(inputs.object_ids),
        seconds=round(seconds, 3),
        fps=round(frames_written / seconds, 3) if seconds > 0 else None,
        peak_mem_bytes=peak,
        peak_mem_kind=peak_kind,
    )
    return stats, files


def summary_path(state_dir: Path, summary_json: Optional[str], num_shards: int, shard_id: int) -> Path:
    """Where a shard's summary goes: ``summary_json`` (``{shard_id}`` / ``{num_shards}`` filled in,
    else a ``_shard<i>of<n>`` suffix when sharded), by default ``<state_dir>/summary[...].json``."""
    if summary_json is None:
        suffix = "" if num_shards == 1 else f"_shard{shard_id}of{num_shards}"
        return state_dir / f"summary{suffix}.json"
    if "{shard_id}" in summary_json:
        return Path(summary_json.format(shard_id=shard_id, num_shards=num_shards))
    path = Path(summary_json)
    if num_shards > 1:
        path = path.with_name(f"{path.stem}_shard{shard_id}of{num_shards}{path.suffix}")
    return path


@dataclass
class Summary:
    """The run summary (settings, totals, one entry per video), rewritten atomically after every video."""

    path: Path
    settings: dict[str, Any]
    videos: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def record(self, name: str, entry: dict[str, Any]) -> None:
        self.videos[name] = entry
        self.write()

    def failures(self) -> dict[str, str]:
        return {name: v["error"] for name, v in self.videos.items() if v["status"] == "failed"}

    def write(self) -> None:
        finished = [v for v in self.videos.values() if v["status"] in ("done", "skipped")]
        ran = [v for v in self.videos.values() if v["status"] == "done"]
        seconds = sum(v["seconds"] for v in ran)
        frames = sum(v["frames"] for v in ran)
        totals = {
            "videos": len(self.videos),
            "done": len(ran),
            "skipped": len(finished) - len(ran),
            "failed": len(self.failures()),
            "frames": sum(v["frames"] for v in finished),
            "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 3) if seconds > 0 else None,
        }
        payload = {"settings": self.settings, "totals": totals, "videos": self.videos}
        atomic_write_json(self.path, payload, fsync=True)


def pending(
    names: Sequence[str], markers: DoneMarkers, fingerprint: dict[str, Any], resume: bool, summary: Summary
) -> list[str]:
    """The names still to run; with ``resume``, those complete for ``fingerprint`` are recorded in the
    summary as skipped (with the stats of their marker)."""
    todo = []
    for name in names:
        marker = markers.complete(name, fingerprint) if resume else None
        if marker is None:
            todo.append(name)
        else:
            summary.videos[name] = {"status": "skipped", **marker.get("stats", {})}
    return todo


def run_dataset(
    names: Sequence[str],
    opts: RunOptions,
    build_predictor: Callable[[], SAM2VideoPredictor],
    markers: DoneMarkers,
    summary: Summary,
    fingerprint: dict[str, Any],
    resume: bool = True,
    title: str = "videos",
) -> int:
    """Run every video of ``names`` not already complete for ``fingerprint`` (with ``resume``).

    The predictor is built only if a video is left to run. One bad video does not stop the
    others: it is logged and recorded as failed. Returns the exit status, 1 if any failed.
    """
    todo = pending(names, markers, fingerprint, resume, summary)
    LOGGER.info(
        "%s: %d videos, %d already complete, %d to run", title, len(names), len(names) - len(todo), len(todo)
    )
    summary.write()
    if not todo:
        return 0

    predictor = build_predictor()
    for name in tqdm(todo, desc="videos", position=0):
        markers.clear(name)
        try:
            stats, files = run_video(predictor, name, opts)
        except Exception as error:  # one bad video must not stop the others
            message = f"{type(error).__name__}: {error}"
            LOGGER.error("video %r failed: %s", name, message)
            if not isinstance(error, VosInputError):
                LOGGER.error("%s", traceback.format_exc())
            if opts.device.type == "cuda":
                torch.cuda.empty_cache()
            summary.record(name, {"status": "failed", "error": message})
            continue
        markers.write(name, fingerprint, files, stats.as_dict())
        summary.record(name, {"status": "done", **stats.as_dict()})

    failures = summary.failures()
    if failures:
        LOGGER.error("%d of %d videos failed:", len(failures), len(names))
        for name, message in failures.items():
            LOGGER.error("  %s: %s", name, message)
        return 1
    LOGGER.info("done: masks in %s, summary in %s", opts.output_mask_dir, summary.path)
    return 0
