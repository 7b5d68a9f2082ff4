"""Semi-supervised VOS inference over a dataset with SAM 2 or SAM2Long.

Reads each video's given masks (DAVIS-style palette PNGs, or SA-V-style per-object PNGs),
tracks all objects of the video together in one inference session, and writes one mask PNG
per frame (or per object and frame) in the same layout, ready for the DAVIS / MOSE / LVOS /
YouTube-VOS / SA-V evaluation tools. Command-line compatible with upstream SAM 2's and the
official SAM2Long ``tools/vos_inference.py``, plus resumable, sharded runs with a JSON summary.

Example (DAVIS 2017 val)::

    python tools/vos_inference.py \\
        --sam2_cfg configs/sam2.1/sam2.1_hiera_b+.yaml \\
        --sam2_checkpoint checkpoints/sam2.1_hiera_base_plus.pt \\
        --base_video_dir DAVIS/JPEGImages/480p --input_mask_dir DAVIS/Annotations/480p \\
        --video_list_file DAVIS/ImageSets/2017/val.txt \\
        --output_mask_dir outputs/davis17_val --num_pathway 3 --iou_thre 0.1 --uncertainty 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

if not __package__:  # run as a script (python tools/vos_inference.py): make `tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.vos_io import (
    DAVIS_PALETTE,
    DoneMarkers,
    MaskFolder,
    MaskInputs,
    MaskWriter,
    VosInputError,
    atomic_write_json,
    collect_inputs,
    list_video_names,
    remove_temp_files,
    resolve_video,
    shard_from_env,
    shard_of,
)

LOGGER = logging.getLogger("vos_inference")

# Score given to an object on frames before its first input mask (upstream's fill value).
ABSENT_SCORE = -1024.0


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (upstream flag names, plus run-management flags)."""
    parser = argparse.ArgumentParser(
        description="Semi-supervised VOS inference with SAM 2 / SAM2Long over a dataset.",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--sam2_cfg",
        default="configs/sam2.1/sam2.1_hiera_b+.yaml",
        help="SAM 2 model config (default: %(default)s)",
    )
    model.add_argument(
        "--sam2_checkpoint",
        default="./checkpoints/sam2.1_hiera_base_plus.pt",
        help="SAM 2 checkpoint file (default: %(default)s)",
    )
    model.add_argument(
        "--hydra_overrides",
        nargs="*",
        default=[],
        metavar="OVERRIDE",
        help="extra hydra overrides for the model config, e.g. ++model.image_size=512",
    )
    model.add_argument(
        "--apply_postprocessing",
        action="store_true",
        help="apply the predictor's post-processing (e.g. hole filling); off in SAM 2's evaluations",
    )
    model.add_argument(
        "--use_vos_optimized_video_predictor",
        action="store_true",
        help="use the compiled VOS predictor (SAM 2 only, i.e. --num_pathway 1)",
    )
    model.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    tree = parser.add_argument_group("SAM2Long memory tree")
    tree.add_argument(
        "--preset",
        default=None,
        help="a configs/sam2long preset (e.g. official, paper); flags below override it",
    )
    tree.add_argument(
        "--num_pathway",
        type=int,
        default=None,
        help="number of pathways (default 3; 1 = plain SAM 2 predictor)",
    )
    tree.add_argument("--iou_thre", type=float, default=None, help="memory IoU threshold (default 0.1)")
    tree.add_argument("--uncertainty", type=float, default=None, help="uncertainty threshold (default 2)")

    data = parser.add_argument_group("data")
    data.add_argument("--base_video_dir", required=True, help="folder of videos: JPEG folders or video files")
    data.add_argument(
        "--input_mask_dir", required=True, help="folder of input masks, one sub-folder per video"
    )
    data.add_argument("--video_list_file", default=None, help="text file with one video name per line")
    data.add_argument("--output_mask_dir", required=True, help="where the predicted mask PNGs are written")
    data.add_argument(
        "--score_thresh", type=float, default=0.0, help="threshold on the output mask logits (default: 0)"
    )
    data.add_argument(
        "--use_all_masks",
        action="store_true",
        help="use every available input mask, not only the first frame's",
    )
    data.add_argument(
        "--per_obj_png_file",
        action="store_true",
        help="read and write one PNG per object in {obj_id:03d}/ folders (SA-V layout)",
    )
    data.add_argument(
        "--track_object_appearing_later_in_video",
        action="store_true",
        help="objects may first appear after frame 0 (LVOS, YouTube-VOS): each object starts on "
        "its first annotated frame",
    )
    data.add_argument("--offload_video_to_cpu", action="store_true", help="keep video frames in CPU memory")
    data.add_argument("--offload_state_to_cpu", action="store_true", help="keep tracking state in CPU memory")
    data.add_argument(
        "--stream_frames",
        action="store_true",
        help="decode frames when used instead of loading the whole video (constant memory for long videos)",
    )

    run = parser.add_argument_group("run management")
    run.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip videos whose outputs are complete for the same settings (default: on)",
    )
    run.add_argument(
        "--num_shards", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)"
    )
    run.add_argument("--shard_id", type=int, default=None, help="this process's shard (default: $RANK or 0)")
    run.add_argument(
        "--state_dir",
        default=None,
        help="folder for done-markers and the summary (default: <output_mask_dir>.state)",
    )
    run.add_argument(
        "--summary_json",
        default=None,
        help="summary file; '{shard_id}' is replaced (default: <state_dir>/summary[_shard<i>of<n>].json)",
    )
    return parser


@dataclass(frozen=True)
class TrackerSettings:
    """Which tracker to build: plain SAM 2 (``tree is None``) or SAM2Long with ``tree``."""

    tree: Optional[Any]  # a sam2long.config.SAM2LongConfig
    preset: Optional[str]

    def describe(self) -> dict[str, Any]:
        if self.tree is None:
            return {"tracker": "sam2", "preset": None}
        return {"tracker": "sam2long", "preset": self.preset, **dataclasses.asdict(self.tree)}


def resolve_tracker(args: argparse.Namespace) -> TrackerSettings:
    """Combine ``--preset`` with the explicit SAM2Long flags (flags win)."""
    overrides = {
        key: value
        for key, value in (
            ("num_pathways", args.num_pathway),
            ("iou_threshold", args.iou_thre),
            ("uncertainty", args.uncertainty),
        )
        if value is not None
    }
    if overrides.get("num_pathways") == 1 and args.preset is None:
        return TrackerSettings(tree=None, preset=None)
    from sam2long.config import SAM2LongConfig

    if args.preset is not None:
        config = SAM2LongConfig.from_preset(args.preset, **overrides)
    else:
        config = SAM2LongConfig.from_dict(overrides)
    if config.num_pathways == 1:
        return TrackerSettings(tree=None, preset=args.preset)
    if args.use_vos_optimized_video_predictor:
        raise ValueError("--use_vos_optimized_video_predictor is only available with --num_pathway 1")
    return TrackerSettings(tree=config, preset=args.preset)


def default_device(environ: Mapping[str, str]) -> str:
    """CUDA (the local rank's GPU under torchrun) when available, else CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{environ['LOCAL_RANK']}" if "LOCAL_RANK" in environ else "cuda"


def build_predictor(args: argparse.Namespace, tracker: TrackerSettings, device: torch.device) -> Any:
    """Build the SAM 2 or SAM2Long video predictor.

    Non-overlapping outputs are enforced by the predictor for single-PNG outputs (as upstream),
    except with ``--track_object_appearing_later_in_video`` where objects are tracked in groups
    and the constraint is applied across all of them here.
    """
    non_overlap = not args.per_obj_png_file and not args.track_object_appearing_later_in_video
    overrides = [f"++model.non_overlap_masks={'true' if non_overlap else 'false'}", *args.hydra_overrides]
    if tracker.tree is None:
        from sam2.build_sam import build_sam2_video_predictor

        return build_sam2_video_predictor(
            config_file=args.sam2_cfg,
            ckpt_path=args.sam2_checkpoint,
            device=device,
            apply_postprocessing=args.apply_postprocessing,
            hydra_overrides_extra=overrides,
            vos_optimized=args.use_vos_optimized_video_predictor,
        )
    from sam2long import build_sam2long_video_predictor

    # Outputs are only consumed as they are yielded, so the session need not keep them
    # (store_outputs=False keeps memory flat in the video length).
    return build_sam2long_video_predictor(
        config_file=args.sam2_cfg,
        ckpt_path=args.sam2_checkpoint,
        device=device,
        config=tracker.tree,
        store_outputs=False,
        hydra_overrides_extra=overrides,
        apply_postprocessing=args.apply_postprocessing,
    )


def output_fingerprint(args: argparse.Namespace, tracker: TrackerSettings) -> dict[str, Any]:
    """Everything that changes the output PNGs; a done-marker only counts if it matches."""
    checkpoint = Path(args.sam2_checkpoint).resolve()
    return {
        "sam2_cfg": args.sam2_cfg,
        "sam2_checkpoint": str(checkpoint),
        "checkpoint_bytes": checkpoint.stat().st_size if checkpoint.is_file() else None,
        "hydra_overrides": list(args.hydra_overrides),
        "apply_postprocessing": args.apply_postprocessing,
        "score_thresh": args.score_thresh,
        "use_all_masks": args.use_all_masks,
        "per_obj_png_file": args.per_obj_png_file,
        "track_object_appearing_later_in_video": args.track_object_appearing_later_in_video,
        **tracker.describe(),
    }


# --------------------------------------------------------------------------- tracking


def apply_non_overlap(scores: torch.Tensor) -> torch.Tensor:
    """Keep each pixel for its highest-scoring object; clamp the others to at most -10.

    ``scores`` is ``(num_objects, 1, H, W)``. Same rule as the predictor's single-PNG outputs.
    """
    if scores.size(0) == 1:
        return scores
    winner = torch.argmax(scores, dim=0, keepdim=True)
    rows = torch.arange(scores.size(0), device=scores.device)[:, None, None, None]
    return torch.where(winner == rows, scores, torch.clamp(scores, max=-10.0))


def _binarize(obj_ids: Sequence[int], scores: torch.Tensor, score_thresh: float) -> dict[int, np.ndarray]:
    masks = (scores > score_thresh).cpu().numpy()
    return {int(obj_id): masks[row] for row, obj_id in enumerate(obj_ids)}


def _add_inputs(
    predictor: Any, state: Any, inputs: MaskInputs, obj_ids: Sequence[int], frame_major: bool
) -> None:
    """Give the input masks of ``obj_ids`` to the predictor, in upstream's order: frame by frame
    (default protocol) or object by object (objects appearing later)."""
    pairs = sorted((frame_idx, obj_id) for obj_id in obj_ids for frame_idx in inputs.masks[obj_id])
    if not frame_major:
        pairs.sort(key=lambda pair: (pair[1], pair[0]))
    for frame_idx, obj_id in pairs:
        predictor.add_new_mask(
            inference_state=state, frame_idx=frame_idx, obj_id=obj_id, mask=inputs.masks[obj_id][frame_idx]
        )


def track_video(
    predictor: Any,
    state: Any,
    inputs: MaskInputs,
    score_thresh: float,
    later_objects: bool,
    non_overlap: bool,
) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Yield ``(frame_idx, {obj_id: bool (1, H, W) mask})`` for every output frame of a video.

    Default protocol (as upstream's ``vos_inference``): all objects are added on their input
    frames and tracked together from the earliest one. With ``later_objects`` (upstream's
    ``vos_separate_inference_per_object``): each object is tracked forward from its first input
    frame and is absent before it; objects sharing that first frame are tracked together in one
    batch (objects are tracked independently, so this equals one run per object up to float
    rounding), and the non-overlap constraint is applied across all objects here when
    ``non_overlap``.
    """
    if not later_objects:
        _add_inputs(predictor, state, inputs, inputs.object_ids, frame_major=True)
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
            yield frame_idx, _binarize(obj_ids, logits, score_thresh)
        return

    object_ids = inputs.object_ids
    row_of = {obj_id: row for row, obj_id in enumerate(object_ids)}
    groups: dict[int, list[int]] = {}
    for obj_id in object_ids:
        groups.setdefault(inputs.first_frame(obj_id), []).append(obj_id)
    starts = sorted(groups)
    height, width = state["video_height"], state["video_width"]

    def run_group(start: int) -> Iterator[tuple[int, torch.Tensor]]:
        predictor.reset_state(state)
        _add_inputs(predictor, state, inputs, groups[start], frame_major=False)
        for frame_idx, _, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=False):
            yield frame_idx, logits.float().cpu()

    # Earlier groups are buffered (CPU, video resolution); the last one is consumed as needed.
    buffered = [(groups[start], dict(run_group(start))) for start in starts[:-1]]
    last_ids, last_stream = groups[starts[-1]], run_group(starts[-1])
    pending: dict[int, torch.Tensor] = {}
    for frame_idx in range(state["num_frames"]):
        scores = torch.full((len(object_ids), 1, height, width), ABSENT_SCORE, dtype=torch.float32)
        for obj_ids, outputs in buffered:
            logits = outputs.pop(frame_idx, None)
            if logits is not None:
                scores[[row_of[i] for i in obj_ids]] = logits
        if frame_idx >= starts[-1]:
            while frame_idx not in pending:
                streamed = next(last_stream, None)
                if streamed is None:
                    break
                pending[streamed[0]] = streamed[1]
            if frame_idx not in pending:
                raise RuntimeError(f"the predictor produced no output for frame {frame_idx}")
            scores[[row_of[i] for i in last_ids]] = pending.pop(frame_idx)
        if non_overlap:
            scores = apply_non_overlap(scores)
        yield frame_idx, _binarize(object_ids, scores, score_thresh)


# --------------------------------------------------------------------------- one video


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
    score_thresh: float
    use_all_masks: bool
    per_obj_png_file: bool
    later_objects: bool
    init_kwargs: dict[str, Any]
    device: torch.device


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA, as upstream's VOS script; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_video(predictor: Any, name: str, opts: RunOptions) -> tuple[dict[str, Any], list[str]]:
    """Track one video and write its masks; returns its statistics and written files."""
    from sam2.utils.frame_sources import FrameSourceError, open_frame_source

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
    frames_written = 0
    with torch.inference_mode(), _autocast(opts.device):
        try:
            state = predictor.init_state(video_path=source, **opts.init_kwargs)
        except FrameSourceError as error:
            raise VosInputError(f"video {name!r}: {error}") from error
        height, width = state["video_height"], state["video_width"]
        writer = MaskWriter(out_dir, opts.per_obj_png_file, inputs.palette or DAVIS_PALETTE, height, width)
        stream = track_video(
            predictor,
            state,
            inputs,
            score_thresh=opts.score_thresh,
            later_objects=opts.later_objects,
            non_overlap=opts.later_objects and not opts.per_obj_png_file,
        )
        for frame_idx, per_obj in tqdm(stream, desc=name, total=len(frame_names), leave=False, position=1):
            files.extend(writer.write(frame_names[frame_idx], per_obj))
            frames_written += 1
        del state
    seconds = time.perf_counter() - started
    peak, peak_kind = meter.read()
    stats = {
        "frames": frames_written,
        "objects": len(inputs.object_ids),
        "seconds": round(seconds, 3),
        "fps": round(frames_written / seconds, 3) if seconds > 0 else None,
        "peak_mem_bytes": peak,
        "peak_mem_kind": peak_kind,
    }
    return stats, files


# --------------------------------------------------------------------------- the run


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _summary_path(args: argparse.Namespace, state_dir: Path, num_shards: int, shard_id: int) -> Path:
    if args.summary_json is None:
        suffix = "" if num_shards == 1 else f"_shard{shard_id}of{num_shards}"
        return state_dir / f"summary{suffix}.json"
    text = args.summary_json
    if "{shard_id}" in text:
        return Path(text.format(shard_id=shard_id, num_shards=num_shards))
    path = Path(text)
    if num_shards > 1:
        path = path.with_name(f"{path.stem}_shard{shard_id}of{num_shards}{path.suffix}")
    return path


@dataclass
class Summary:
    """The run summary, rewritten atomically after every video."""

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
        atomic_write_json(self.path, {"settings": self.settings, "totals": totals, "videos": self.videos})


def _shards(args: argparse.Namespace) -> tuple[int, int]:
    """``(num_shards, shard_id)``: the flags, else torchrun's environment, else ``(1, 0)``."""
    env_shards, env_id = shard_from_env(os.environ)
    num_shards = args.num_shards if args.num_shards is not None else env_shards
    shard_id = args.shard_id if args.shard_id is not None else env_id
    return num_shards, shard_id


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run inference on every video of this shard; returns the exit status (1 if any failed)."""
    args = build_parser().parse_args(argv)
    if not any(isinstance(h, _TqdmHandler) for h in LOGGER.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False

    num_shards, shard_id = _shards(args)
    try:
        all_names = list_video_names(Path(args.base_video_dir), args.video_list_file)
        names = shard_of(all_names, num_shards, shard_id)
        tracker = resolve_tracker(args)
    except (OSError, ValueError, VosInputError) as error:
        build_parser().error(str(error))
    device = torch.device(args.device or default_device(os.environ))
    output_dir = Path(args.output_mask_dir)
    state_dir = Path(args.state_dir) if args.state_dir else Path(f"{output_dir.resolve()}.state")
    markers = DoneMarkers(state_dir, output_dir)
    fingerprint = output_fingerprint(args, tracker)
    summary = Summary(
        _summary_path(args, state_dir, num_shards, shard_id),
        {**fingerprint, "device": str(device), "num_shards": num_shards, "shard_id": shard_id},
    )

    todo = []
    for name in names:
        marker = markers.complete(name, fingerprint) if args.resume else None
        if marker is None:
            todo.append(name)
        else:
            summary.videos[name] = {"status": "skipped", **marker.get("stats", {})}
    LOGGER.info(
        "shard %d/%d: %d videos, %d already complete, %d to run (%s)",
        shard_id,
        num_shards,
        len(names),
        len(names) - len(todo),
        len(todo),
        "SAM 2" if tracker.tree is None else f"SAM2Long, {tracker.tree.num_pathways} pathways",
    )
    summary.write()
    if not todo:
        return 0

    predictor = build_predictor(args, tracker, device)
    init_kwargs = {"async_loading_frames": False}
    for flag in ("offload_video_to_cpu", "offload_state_to_cpu", "stream_frames"):
        if getattr(args, flag):
            init_kwargs[flag] = True
    opts = RunOptions(
        base_video_dir=Path(args.base_video_dir),
        input_mask_dir=Path(args.input_mask_dir),
        output_mask_dir=output_dir,
        score_thresh=args.score_thresh,
        use_all_masks=args.use_all_masks,
        per_obj_png_file=args.per_obj_png_file,
        later_objects=args.track_object_appearing_later_in_video,
        init_kwargs=init_kwargs,
        device=device,
    )
    for name in tqdm(todo, desc="videos", position=0):
        markers.clear(name)
        try:
            stats, files = run_video(predictor, name, opts)
        except Exception as error:  # one bad video must not stop the others
            message = f"{type(error).__name__}: {error}"
            LOGGER.error("video %r failed: %s", name, message)
            if not isinstance(error, VosInputError):
                LOGGER.error("%s", traceback.format_exc())
            if device.type == "cuda":
                torch.cuda.empty_cache()
            summary.record(name, {"status": "failed", "error": message})
            continue
        markers.write(name, fingerprint, files, stats)
        summary.record(name, {"status": "done", **stats})

    failures = summary.failures()
    if failures:
        LOGGER.error("%d of %d videos failed:", len(failures), len(names))
        for name, message in failures.items():
            LOGGER.error("  %s: %s", name, message)
        return 1
    LOGGER.info("done: masks in %s, summary in %s", output_dir, summary.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
