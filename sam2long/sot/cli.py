"""Command lines of box tracking: ``sam2long sot`` (inference over a dataset) and
``sam2long eval sot`` (OPE scores, plots, the paper's table).

Examples::

    sam2long sot --dataset lasot --root data/LaSOT --out runs/sam2long/lasot --model sam2.1-large
    sam2long eval sot --dataset lasot --gt_root data/LaSOT --pred_root runs/sam2/lasot runs/sam2long/lasot \\
        --output_json runs/lasot.json
    sam2long eval sot --report --gt_root lasot=data/LaSOT lasot_ext=data/LaSOT_ext \\
        got10k_val=data/GOT-10k/val --pred_root runs/sam2 runs/sam2long
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from sam2long.sot.datasets import DATASETS, SotInputError, get_dataset, sequence_names

LOGGER = logging.getLogger("sam2long.sot")


def build_parser() -> argparse.ArgumentParser:
    """``sam2long sot``: the model flags of ``sam2long segment``, the tree flags and run management
    of ``sam2long-vos``."""
    from sam2long.config import add_config_arguments
    from sam2long.models import add_model_arguments
    from sam2long.tracker_spec import TRACKERS

    parser = argparse.ArgumentParser(
        prog="sam2long sot",
        description="Box tracking over a benchmark: the first frame's box prompts the tracker, every "
        "frame's mask becomes its tight box, written in the benchmark's result format.",
    )
    model = add_model_arguments(parser)
    model.add_argument(
        "--tracker", choices=TRACKERS, default="sam2long", help="the tracker (default: %(default)s)"
    )
    model.add_argument(
        "--apply_postprocessing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SAM 2's post-processing (default: on for the trackers whose official code uses it, "
        "samurai and dam4sam and their combinations; off for sam2 and sam2long, as their evaluations)",
    )
    add_config_arguments(parser.add_argument_group("SAM2Long memory tree (--tracker sam2long)"))
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="the benchmark")
    data.add_argument("--root", required=True, help="the dataset folder, as its download unpacks")
    data.add_argument(
        "--seq_list", default=None, help="text file of sequence names (default: the official list)"
    )
    data.add_argument("--out", required=True, help="result folder (the benchmark's result format)")
    data.add_argument(
        "--score_thresh", type=float, default=0.0, help="threshold on the mask logits (default: 0)"
    )
    data.add_argument(
        "--zip",
        default=None,
        metavar="FILE",
        help="afterwards, zip the results for the server (TrackingNet, GOT-10k)",
    )
    run = parser.add_argument_group("run management")
    run.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True, help="skip finished sequences"
    )
    run.add_argument(
        "--num_shards", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)"
    )
    run.add_argument("--shard_id", type=int, default=None, help="this process's shard (default: $RANK or 0)")
    run.add_argument("--state_dir", default=None, help="done-markers and summary (default: <out>.state)")
    run.add_argument(
        "--summary_json",
        default=None,
        help="summary file (default: <state_dir>/summary[_shard<i>of<n>].json)",
    )
    return parser


def _tracker(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Optional[Sequence[str]]):
    """The run's :class:`~sam2long.tracker_spec.TrackerSpec`, checked as ``sam2long-vos`` checks it."""
    from sam2long.models import model_files_from_args
    from sam2long.tracker_spec import OFFICIALLY_POSTPROCESSED
    from sam2long.vos.cli import given_tree_flags, resolve_tracker

    config, checkpoint, _ = model_files_from_args(args)
    postprocessing = args.apply_postprocessing
    if postprocessing is None:
        postprocessing = args.tracker in OFFICIALLY_POSTPROCESSED
    values = {**vars(args), "apply_postprocessing": postprocessing}
    settings = argparse.Namespace(
        **values, sam2_cfg=config, sam2_checkpoint=checkpoint, use_vos_optimized_video_predictor=False
    )
    return resolve_tracker(settings, given_tree_flags(parser, argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sam2long sot``: exit status 1 if a sequence failed, 2 on usage errors."""
    import torch

    from sam2.build_sam import default_device
    from sam2.precision import resolve_precision
    from sam2long.sot.results import write_zip
    from sam2long.sot.run import ResultMarkers, run_sot
    from sam2long.vos.dataset import resolve_shards, shard_of
    from sam2long.vos.run import Summary, summary_path

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        tracker = _tracker(parser, args, argv)
        num_shards, shard_id = resolve_shards(args.num_shards, args.shard_id, os.environ)
        all_names = sequence_names(args.dataset, Path(args.root), args.seq_list)
        names = shard_of(all_names, num_shards, shard_id)
    except (OSError, ValueError, SotInputError) as error:
        parser.error(str(error))
    out = Path(args.out)
    layout = get_dataset(args.dataset).layout
    device = torch.device(args.device or default_device())
    precision = resolve_precision(args.dtype, device)
    fingerprint = {
        **tracker.fingerprint(),
        "dataset": args.dataset,
        "score_thresh": args.score_thresh,
        "dtype": precision.name,
    }
    state_dir = Path(args.state_dir) if args.state_dir else Path(f"{out.resolve()}.state")
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
    status = run_sot(
        names,
        args.dataset,
        Path(args.root),
        layout,
        out,
        build_predictor=lambda: tracker.build(device, non_overlap_masks=False),
        markers=ResultMarkers(state_dir, out),
        summary=summary,
        fingerprint=fingerprint,
        device=device,
        score_thresh=args.score_thresh,
        resume=args.resume,
    )
    if args.zip is not None and status == 0:
        try:
            LOGGER.info("wrote %s", write_zip(out, layout, all_names, Path(args.zip)))
        except SotInputError as error:  # other shards not finished yet
            LOGGER.warning("no zip: %s", error)
    return status


def _gt_roots(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, Path]:
    roots = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or name not in DATASETS:
            parser.error(
                f"--report expects --gt_root DATASET=DIR (datasets {sorted(DATASETS)}), got {item!r}"
            )
        roots[name] = Path(folder)
    return roots


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """``sam2long eval sot``: OPE scores of one or more result folders, or ``--report``."""
    from sam2long.mask_io import atomic_write_json
    from sam2long.sot.evaluate import evaluate, write_reports
    from sam2long.sot.report import report

    parser = argparse.ArgumentParser(
        prog="sam2long eval sot",
        description="One-pass evaluation (pytracking's analysis; GOT-10k val also as the got10k toolkit): "
        "success AUC, precision at 20 px, normalised precision at 0.2, plots and per-sequence CSV.",
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="the benchmark (not with --report)")
    parser.add_argument(
        "--gt_root", nargs="+", required=True, help="dataset folder (--report: DATASET=DIR ...)"
    )
    parser.add_argument("--pred_root", nargs="+", required=True, help="result folders, one curve each")
    parser.add_argument("--seq_list", default=None, help="score only these sequences (one name a line)")
    parser.add_argument("--output_json", default=None, help="scores JSON; the CSV and PNG plots go beside it")
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--report", action="store_true", help="the SAM2Long paper's Table 5 beside these runs"
    )
    args = parser.parse_args(argv)
    try:
        if args.report:
            table, payload = report(_gt_roots(parser, args.gt_root), [Path(p) for p in args.pred_root])
            print(table)
            if args.output_json:
                atomic_write_json(args.output_json, payload)
            return 0
        if args.dataset is None or len(args.gt_root) != 1:
            parser.error("give --dataset and one --gt_root (or --report)")
        pred_roots = [Path(p) for p in args.pred_root]
        payload, results = evaluate(args.dataset, Path(args.gt_root[0]), pred_roots, args.seq_list)
    except SotInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.output_json:
        try:
            write_reports(Path(args.output_json), payload, results, plots=not args.no_plots)
        except SotInputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    keys = ("auc", "precision", "norm_precision", "ao", "sr50", "sr75")
    for entry in payload["trackers"]:
        scores = "  ".join(f"{k} {entry[k]:.2f}" for k in keys if entry.get(k) is not None)
        print(f"{entry['name']}: {entry['sequences']} sequences  {scores}")
        for name, message in entry["errors"].items():
            print(f"  error {name}: {message}", file=sys.stderr)
    return 1 if any(entry["errors"] for entry in payload["trackers"]) else 0


if __name__ == "__main__":
    sys.exit(main())
