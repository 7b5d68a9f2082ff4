"""Command line of dataset VOS inference: ``sam2long-vos`` / ``python tools/vos_inference.py``.

Flag names follow upstream SAM 2's and the official SAM2Long ``tools/vos_inference.py``; the
SAM2Long tree flags come from :func:`sam2long.config.add_config_arguments`. Everything else is
library code in :mod:`sam2long.vos`.

Example (DAVIS 2017 val)::

    sam2long-vos \\
        --sam2_cfg configs/sam2.1/sam2.1_hiera_b+.yaml \\
        --sam2_checkpoint checkpoints/sam2.1_hiera_base_plus.pt \\
        --base_video_dir DAVIS/JPEGImages/480p --input_mask_dir DAVIS/Annotations/480p \\
        --video_list_file DAVIS/ImageSets/2017/val.txt \\
        --output_mask_dir outputs/davis17_val --num_pathway 3 --iou_thre 0.1 --uncertainty 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from sam2.build_sam import default_device
from sam2.precision import add_dtype_argument, resolve_precision
from sam2long.config import SAM2LongConfig, add_config_arguments
from sam2long.tracker_spec import TRACKERS, TrackerSpec, spec_from_args
from sam2long.vos.dataset import DoneMarkers, VosInputError, list_video_names, resolve_shards, shard_of
from sam2long.vos.run import LOGGER, RunOptions, Summary, run_dataset, summary_path

# Destinations of the SAM2Long tree flags (refused with --tracker sam2).
TREE_DESTS = (*(f.name for f in dataclasses.fields(SAM2LongConfig)), "preset")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (upstream flag names, plus tracker choice and run management)."""
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
        "--tracker",
        choices=TRACKERS,
        default="sam2long",
        help="sam2long: the SAM2Long memory tree (--num_pathway 1 is SAM2Long with one pathway); "
        "sam2: the plain SAM 2 video predictor, which takes no tree flags (default: %(default)s)",
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
        help="use the compiled VOS predictor (--tracker sam2 only)",
    )
    model.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda:$LOCAL_RANK under torchrun, else cuda if available, else cpu)",
    )
    add_dtype_argument(model)

    add_config_arguments(parser.add_argument_group("SAM2Long memory tree (--tracker sam2long)"))

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


def given_tree_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> list[str]:
    """The SAM2Long tree flags present on the command line ``argv``, whatever their defaults.

    Parses once more into a namespace pre-filled with a marker: argparse only fills in defaults
    for attributes the namespace lacks, so a destination keeps the marker unless its flag is given.
    """
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(TREE_DESTS, unset)))
    given = {dest for dest in TREE_DESTS if getattr(probe, dest) is not unset}
    flags: dict[str, str] = {}  # dest -> its first flag, in parser order
    for action in parser._actions:
        if action.dest in given:
            flags.setdefault(action.dest, action.option_strings[0])
    return list(flags.values())


def resolve_tracker(args: argparse.Namespace, tree_flags: Sequence[str] = ()) -> TrackerSpec:
    """The tracker of the command line; ``tree_flags`` are the tree flags given (see
    :func:`given_tree_flags`). Raises ``ValueError`` for flags that do not fit the tracker."""
    if args.tracker == "sam2" and tree_flags:
        raise ValueError(
            f"--tracker sam2 takes no SAM2Long tree flags, got {', '.join(tree_flags)} "
            "(use --tracker sam2long; --num_pathway 1 is SAM2Long with one pathway)"
        )
    if args.tracker != "sam2" and args.use_vos_optimized_video_predictor:
        raise ValueError("--use_vos_optimized_video_predictor is only available with --tracker sam2")
    return spec_from_args(
        args,
        args.sam2_cfg,
        args.sam2_checkpoint,
        apply_postprocessing=args.apply_postprocessing,
        vos_optimized=args.use_vos_optimized_video_predictor,
    )


def run_options(args: argparse.Namespace, device: torch.device) -> RunOptions:
    """The per-video settings of the command line."""
    return RunOptions(
        base_video_dir=Path(args.base_video_dir),
        input_mask_dir=Path(args.input_mask_dir),
        output_mask_dir=Path(args.output_mask_dir),
        device=device,
        score_thresh=args.score_thresh,
        use_all_masks=args.use_all_masks,
        per_obj_png_file=args.per_obj_png_file,
        later_objects=args.track_object_appearing_later_in_video,
        offload_video_to_cpu=args.offload_video_to_cpu,
        offload_state_to_cpu=args.offload_state_to_cpu,
        stream_frames=args.stream_frames,
    )


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging() -> None:
    if not any(isinstance(h, _TqdmHandler) for h in LOGGER.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run inference on every video of this shard; returns the exit status (1 if any video
    failed; usage errors exit with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        tracker = resolve_tracker(args, given_tree_flags(parser, argv))
        num_shards, shard_id = resolve_shards(args.num_shards, args.shard_id, os.environ)
        names = shard_of(
            list_video_names(Path(args.base_video_dir), args.video_list_file), num_shards, shard_id
        )
    except (OSError, ValueError, VosInputError) as error:
        parser.error(str(error))
    device = torch.device(args.device or default_device())
    opts = run_options(args, device)
    state_dir = Path(args.state_dir) if args.state_dir else Path(f"{opts.output_mask_dir.resolve()}.state")
    precision = resolve_precision(args.dtype, device)
    # the dtype computed in, not the one asked for: "auto" on another machine may differ
    fingerprint = {**tracker.fingerprint(), **opts.fingerprint(), "dtype": precision.name}
    summary = Summary(
        summary_path(state_dir, args.summary_json, num_shards, shard_id),
        {
            **fingerprint,
            "device": str(device),
            "precision": precision.summary(),
            "num_shards": num_shards,
            "shard_id": shard_id,
        },
    )
    return run_dataset(
        names,
        opts,
        build_predictor=lambda: tracker.build(device, non_overlap_masks=opts.predictor_non_overlap),
        markers=DoneMarkers(state_dir, opts.output_mask_dir),
        summary=summary,
        fingerprint=fingerprint,
        resume=args.resume,
        title=f"shard {shard_id}/{num_shards} ({tracker.label()})",
    )


if __name__ == "__main__":
    sys.exit(main())
