"""SA-V (and DAVIS-layout) semi-supervised VOS evaluator: J, F and J&F per object and overall.

Scores equal those of the official SA-V evaluator (``sav_dataset/sav_evaluator.py`` in
facebookresearch/sam2):

* each object's score is the mean over its evaluated frames, the dataset score the mean over
  all objects, and J&F the average of J and F;
* the first and the last annotated frame of every object folder (SA-V layout) or video
  (DAVIS layout) are skipped unless ``--do_not_skip_first_and_last_frame`` is given;
* an object enters the average from the first evaluated frame where it is present in the
  ground truth or the prediction; objects never present in the evaluated ground truth are
  not reported.

Two ground-truth layouts are accepted (the prediction must use the same one)::

    {root}/{video}/{obj_id:03d}/{frame}.png   # SA-V: one binary mask per object and frame
    {root}/{video}/{frame}.png                # DAVIS: one palette PNG with all object ids

Unlike the official script, a missing predicted frame or object folder counts as an empty
mask. Videos missing from the prediction are skipped with a warning (``--strict`` makes this,
and extra predicted videos, an error).

Usage::

    python -m sav_dataset.sav_evaluator --gt_root sav_val/Annotations_6fps --pred_root outputs/sav_val
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam2long.mask_io import MaskError, read_mask
from sav_dataset.utils.io import (
    has_at_most_two_values,
    label_values,
    list_pngs,
    list_subdirs,
    read_mask_or_empty,
    stack_masks,
)
from sav_dataset.utils.scoring import (
    ObjectScores,
    Summary,
    chunks,
    default_num_processes,
    format_float,
    map_videos,
    render_table,
    score_pair,
    summarize,
    write_csv,
)


class EvaluationError(RuntimeError):
    """Inputs that cannot be evaluated (missing videos in strict mode, bad layout, ...)."""


@dataclass(frozen=True)
class VideoJob:
    """Everything a worker process needs to score one video."""

    gt_root: str
    pred_root: str
    video: str
    skip_first_and_last: bool


@dataclass
class SavResults:
    """Per-object scores (in video, object order) and their dataset-level summary."""

    objects: list[ObjectScores]
    summary: Summary
    videos: list[str]


def _frames_to_score(frames: list[str], skip_first_and_last: bool) -> list[str]:
    return frames[1:-1] if skip_first_and_last else frames


def _trim_to_first_presence(
    video: str,
    object_id: str,
    frames: list[str],
    j: np.ndarray,
    f: np.ndarray,
    in_gt: np.ndarray,
    in_pred: np.ndarray,
) -> ObjectScores | None:
    """Keep the frames from the first one where the object is in the GT or the prediction.

    Returns None when the object is never present in the evaluated ground truth.
    """
    if not in_gt.any():
        return None
    start = int(np.argmax(in_gt | in_pred))
    return ObjectScores(video=video, object_id=object_id, frames=frames[start:], j=j[start:], f=f[start:])


def _read_binary(path: Path) -> np.ndarray:
    mask = read_mask(path)
    if not has_at_most_two_values(mask):
        raise MaskError(f"{path} holds more than one object; the SA-V layout expects one binary mask per PNG")
    return mask > 0


def _score_object_folder(
    video: str, object_id: str, gt_dir: Path, pred_dir: Path, frames: list[str]
) -> ObjectScores | None:
    """Score one SA-V object folder (binary masks) on the given frames."""
    if not frames:
        return None
    j_parts, f_parts, in_gt, in_pred = [], [], [], []
    for start, stop in chunks(len(frames)):
        gt_stack, pred_stack = [], []
        names = frames[start:stop]
        for name in names:
            gt = _read_binary(gt_dir / name)
            pred_path = pred_dir / name
            pred = read_mask_or_empty(pred_path, gt.shape, gt_dir / name)
            if not has_at_most_two_values(pred):
                raise MaskError(
                    f"{pred_path} holds more than one object; the SA-V layout expects one binary mask per PNG"
                )
            gt_stack.append(gt)
            pred_stack.append(pred > 0)
        gt_arr = stack_masks(gt_stack, [gt_dir / n for n in names])
        pred_arr = np.stack(pred_stack)
        j, f = score_pair(pred_arr, gt_arr)
        j_parts.append(j)
        f_parts.append(f)
        in_gt.append(gt_arr.any(axis=(1, 2)))
        in_pred.append(pred_arr.any(axis=(1, 2)))
    return _trim_to_first_presence(
        video,
        object_id,
        frames,
        np.concatenate(j_parts),
        np.concatenate(f_parts),
        np.concatenate(in_gt),
        np.concatenate(in_pred),
    )


def _score_label_video(video: str, gt_dir: Path, pred_dir: Path, frames: list[str]) -> list[ObjectScores]:
    """Score a DAVIS-layout video (one palette PNG per frame holding every object id)."""
    count = len(frames)
    per_id: dict[int, dict[str, np.ndarray]] = {}
    for start, stop in chunks(count):
        gt_stack, pred_stack = [], []
        names = frames[start:stop]
        for name in names:
            gt = read_mask(gt_dir / name)
            gt_stack.append(gt)
            pred_stack.append(read_mask_or_empty(pred_dir / name, gt.shape, gt_dir / name))
        gt_arr = stack_masks(gt_stack, [gt_dir / n for n in names])
        pred_arr = np.stack(pred_stack)
        ids = set(label_values(gt_arr).tolist()) | set(label_values(pred_arr).tolist())
        ids.discard(0)
        for obj_id in sorted(ids | set(per_id)):
            if obj_id not in per_id:
                per_id[obj_id] = {
                    "j": np.zeros(count),
                    "f": np.zeros(count),
                    "gt": np.zeros(count, dtype=bool),
                    "pred": np.zeros(count, dtype=bool),
                }
            record = per_id[obj_id]
            gt_obj, pred_obj = gt_arr == obj_id, pred_arr == obj_id
            record["j"][start:stop], record["f"][start:stop] = score_pair(pred_obj, gt_obj)
            record["gt"][start:stop] = gt_obj.any(axis=(1, 2))
            record["pred"][start:stop] = pred_obj.any(axis=(1, 2))
    results = []
    for obj_id in sorted(per_id):
        record = per_id[obj_id]
        scored = _trim_to_first_presence(
            video, str(obj_id), frames, record["j"], record["f"], record["gt"], record["pred"]
        )
        if scored is not None:
            results.append(scored)
    return results


def evaluate_video(job: VideoJob) -> list[ObjectScores]:
    """Score every object of one video; the layout is taken from the ground-truth folder."""
    gt_dir = Path(job.gt_root) / job.video
    pred_dir = Path(job.pred_root) / job.video
    object_dirs = list_subdirs(gt_dir)
    if not object_dirs:
        frames = _frames_to_score(list_pngs(gt_dir), job.skip_first_and_last)
        return _score_label_video(job.video, gt_dir, pred_dir, frames)
    results = []
    for object_id in object_dirs:
        frames = _frames_to_score(list_pngs(gt_dir / object_id), job.skip_first_and_last)
        scored = _score_object_folder(job.video, object_id, gt_dir / object_id, pred_dir / object_id, frames)
        if scored is None:
            warnings.warn(
                f"{job.video}/{object_id}: object absent from every evaluated ground-truth frame; not scored",
                stacklevel=2,
            )
        else:
            results.append(scored)
    return results


def resolve_videos(gt_root: Path, pred_root: Path, strict: bool) -> tuple[Path, list[str]]:
    """Pick the videos to evaluate and, like the official tool, descend into ``gt_root/Annotations``."""
    if not gt_root.is_dir():
        raise EvaluationError(f"ground-truth folder {gt_root} does not exist")
    if not pred_root.is_dir():
        raise EvaluationError(f"prediction folder {pred_root} does not exist")
    annotations = gt_root / "Annotations"
    if annotations.is_dir() and list_subdirs(annotations) and not (pred_root / "Annotations").is_dir():
        gt_root = annotations
    gt_videos = set(list_subdirs(gt_root))
    pred_videos = set(list_subdirs(pred_root))
    missing = sorted(gt_videos - pred_videos)
    extra = sorted(pred_videos - gt_videos)
    if strict and (missing or extra):
        problems = []
        if missing:
            problems.append(f"videos in {gt_root} but not in {pred_root}: {missing}")
        if extra:
            problems.append(f"videos in {pred_root} but not in {gt_root}: {extra}")
        raise EvaluationError("; ".join(problems))
    if missing:
        warnings.warn(
            f"{len(missing)} video(s) have no prediction folder and are skipped: {missing}", stacklevel=2
        )
    return gt_root, sorted(gt_videos & pred_videos)


def evaluate(
    gt_root: str | Path,
    pred_root: str | Path,
    *,
    strict: bool = False,
    num_processes: int = 1,
    skip_first_and_last: bool = True,
    progress: bool = False,
) -> SavResults:
    """Evaluate every video of ``pred_root`` against ``gt_root`` (see the module docstring)."""
    gt_path, videos = resolve_videos(Path(gt_root), Path(pred_root), strict)
    jobs = [VideoJob(str(gt_path), str(pred_root), video, skip_first_and_last) for video in videos]
    per_video = map_videos(evaluate_video, jobs, num_processes, progress)
    objects = [scores for video_scores in per_video for scores in video_scores]
    return SavResults(objects=objects, summary=summarize(objects), videos=videos)


def result_rows(results: SavResults, digits: int) -> list[list[str]]:
    """Rows ``sequence, obj, J&F, J, F`` with the global score first, as the official CSV."""
    s = results.summary
    rows = [
        ["Global score", "", format_float(s.jf, digits), format_float(s.j, digits), format_float(s.f, digits)]
    ]
    for o in results.objects:
        rows.append(
            [
                o.video,
                o.object_id,
                format_float(o.jf_mean, digits),
                format_float(o.j_mean, digits),
                format_float(o.f_mean, digits),
            ]
        )
    return rows


HEADER = ["sequence", "obj", "J&F", "J", "F"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="SA-V / DAVIS-layout J&F evaluator (numbers match the official SA-V tool)."
    )
    parser.add_argument("--gt_root", required=True, help="ground-truth root, e.g. sav_val/Annotations_6fps")
    parser.add_argument("--pred_root", required=True, help="prediction root with the same layout as gt_root")
    parser.add_argument(
        "-n", "--num_processes", type=int, default=default_num_processes(), help="worker processes"
    )
    parser.add_argument(
        "-s", "--strict", action="store_true", help="error if a GT video has no prediction (or vice versa)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    parser.add_argument(
        "--do_not_skip_first_and_last_frame",
        action="store_true",
        help="also score the first and last annotated frames (SA-V val/test skip them)",
    )
    parser.add_argument("--output_csv", default=None, help="results CSV (default: {pred_root}/results.csv)")
    parser.add_argument(
        "--per_frame_curve", default=None, help="write a PNG of mean J&F over normalised time"
    )
    parser.add_argument(
        "--extra_pred_roots", nargs="*", default=[], help="more prediction roots to add to the curve"
    )
    parser.add_argument("--curve_bins", type=int, default=20, help="time bins of the per-frame curve")
    return parser


def _print_results(label: str, results: SavResults, quiet: bool) -> None:
    s = results.summary
    if not quiet:
        print(render_table(HEADER, result_rows(results, 1)))
    print(
        f"{label}: J&F {format_float(s.jf, 2)}  J {format_float(s.j, 2)}  F {format_float(s.f, 2)}  "
        f"({s.num_objects} objects, {len(results.videos)} videos)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skip = not args.do_not_skip_first_and_last_frame
    pred_roots = [args.pred_root, *args.extra_pred_roots]
    all_results: dict[str, SavResults] = {}
    try:
        for pred_root in pred_roots:
            results = evaluate(
                args.gt_root,
                pred_root,
                strict=args.strict,
                num_processes=args.num_processes,
                skip_first_and_last=skip,
                progress=not args.quiet,
            )
            all_results[pred_root] = results
            csv_path = (
                args.output_csv
                if pred_root == args.pred_root and args.output_csv
                else Path(pred_root) / "results.csv"
            )
            write_csv(csv_path, HEADER, result_rows(results, 6))
            _print_results(str(pred_root), results, args.quiet or pred_root != args.pred_root)
            if not args.quiet:
                print(f"results written to {csv_path}")
    except (EvaluationError, MaskError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.per_frame_curve:
        from sav_dataset.utils.plot import save_per_frame_curves

        backend = save_per_frame_curves(
            [(str(root), res.objects) for root, res in all_results.items()],
            args.per_frame_curve,
            bins=args.curve_bins,
        )
        if not args.quiet:
            print(f"per-frame curve written to {args.per_frame_curve} ({backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
