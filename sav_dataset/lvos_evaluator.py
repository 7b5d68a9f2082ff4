"""LVOS / DAVIS-2017 semi-supervised evaluator with the seen/unseen category split.

Ground truth and predictions are single palette PNGs per frame, ``{root}/{video}/{frame}.png``
(LVOS ``Annotations`` and DAVIS-2017 layout). J and F per frame are those of the DAVIS
protocol (void pixels, label 255 by default, are ignored as in DAVIS-2017). Each object is
evaluated on its own frame range:

* with a meta JSON (LVOS ``meta.json``), on the annotated frames whose number lies in the
  object's ``frame_range`` (``start`` inclusive, ``end`` exclusive, as the LVOS toolkit reads it);
* without one, from the first frame where the object appears in the ground truth to the last
  frame, so objects that enter later are scored from their first annotated frame.

``--skip_first_and_last`` further drops each object's first and last evaluated frame, which for
DAVIS-2017 (all objects in frame 0) is the standard semi-supervised protocol.

Objects are grouped into seen and unseen categories (LVOS, SAM2Long Table 3). The headline
numbers follow the LVOS toolkit: J = (J_s + J_u) / 2, F = (F_s + F_u) / 2 and
J&F = (J_s + F_s + J_u + F_u) / 4; when one group is empty the other alone is used. The group
of an object comes, in this order of precedence, from an ``"unseen"``/``"seen"``/``"split"``
entry of the object, then of its video in the meta JSON, then from the video being listed in
``--unseen_list`` (the LVOS ``unseen_videos.txt``) or the meta's top-level ``"unseen_videos"``,
then from its ``"category"`` being in the meta's top-level ``"unseen_categories"``; otherwise it
is seen. Meta JSON sketch::

    {"videos": {"vid1": {"objects": {"1": {"frame_range": {"start": 0, "end": 100}, "category": "cat"}}}},
     "unseen_videos": ["vid2"], "unseen_categories": ["okapi"]}

Usage::

    python -m sav_dataset.lvos_evaluator --gt_root LVOS/valid/Annotations --pred_root outputs/lvos \\
        --meta_json LVOS/valid/meta.json --unseen_list unseen_videos.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam2long.mask_io import MaskError, read_mask
from sav_dataset.utils.io import (
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

SEEN, UNSEEN = "seen", "unseen"
DEFAULT_VOID_LABEL = 255


class EvaluationError(RuntimeError):
    """Inputs that cannot be evaluated (bad meta JSON, missing videos in strict mode, ...)."""


@dataclass
class ObjectSpec:
    """An object listed in the meta JSON with its frame-number range and group."""

    object_id: int
    start: int | None
    end: int | None
    unseen: bool


@dataclass
class VideoSpec:
    """A video to evaluate; ``objects`` is None when they are discovered from the ground truth."""

    name: str
    unseen: bool
    objects: list[ObjectSpec] | None = None


@dataclass(frozen=True)
class VideoJob:
    gt_root: str
    pred_root: str
    video: VideoSpec
    skip_first_and_last: bool
    void_label: int | None


@dataclass
class LvosSummary:
    """Seen/unseen summaries and the LVOS headline numbers derived from them (percent)."""

    seen: Summary
    unseen: Summary
    all_objects: Summary
    j: float
    f: float

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


@dataclass
class LvosResults:
    objects: list[ObjectScores]
    summary: LvosSummary
    videos: list[str] = field(default_factory=list)


def _explicit_unseen(entry: dict[str, Any]) -> bool | None:
    """The group an entry of the meta JSON states for itself, if any."""
    if "unseen" in entry:
        return bool(entry["unseen"])
    if "seen" in entry:
        return not bool(entry["seen"])
    split = entry.get("split")
    if split in (SEEN, UNSEEN):
        return split == UNSEEN
    return None


def _frame_number(value: Any, where: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise EvaluationError(f"{where}: frame number {value!r} is not an integer") from err


def read_unseen_list(path: str | Path) -> set[str]:
    """Video names, one per line (the LVOS ``unseen_videos.txt`` format)."""
    with open(path, encoding="utf-8") as handle:
        return {line.strip() for line in handle if line.strip()}


def load_meta(path: str | Path, unseen_videos: set[str]) -> list[VideoSpec]:
    """Parse an LVOS-style meta JSON into video specs, resolving every object's group."""
    with open(path, encoding="utf-8") as handle:
        meta = json.load(handle)
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise EvaluationError(f"{path}: expected a top-level 'videos' mapping")
    unseen_videos = unseen_videos | set(meta.get("unseen_videos", []))
    unseen_categories = set(meta.get("unseen_categories", []))
    specs = []
    for name in sorted(videos):
        entry = videos[name] or {}
        video_flag = _explicit_unseen(entry)
        video_unseen = video_flag if video_flag is not None else name in unseen_videos
        objects = []
        for key, obj in sorted((entry.get("objects") or {}).items(), key=lambda item: int(item[0])):
            obj = obj or {}
            frame_range = obj.get("frame_range") or {}
            where = f"{path}: video {name} object {key}"
            flag = _explicit_unseen(obj)
            if flag is None and video_flag is None and name not in unseen_videos and "category" in obj:
                flag = obj["category"] in unseen_categories
            objects.append(
                ObjectSpec(
                    object_id=int(key),
                    start=_frame_number(frame_range.get("start"), where),
                    end=_frame_number(frame_range.get("end"), where),
                    unseen=video_unseen if flag is None else flag,
                )
            )
        specs.append(VideoSpec(name=name, unseen=video_unseen, objects=objects or None))
    return specs


def _sorted_frames(gt_dir: Path) -> tuple[list[str], list[int] | None]:
    """GT frame files in temporal order and their frame numbers (None when names are not numeric)."""
    names = list_pngs(gt_dir)
    stems = [Path(n).stem for n in names]
    if stems and all(s.isdigit() for s in stems):
        order = sorted(range(len(names)), key=lambda i: int(stems[i]))
        return [names[i] for i in order], [int(stems[i]) for i in order]
    return names, None


def _position_range(spec: ObjectSpec, numbers: list[int] | None, count: int, video: str) -> tuple[int, int]:
    """Positions ``[first, stop)`` of the frames whose number lies in the object's frame range."""
    if spec.start is None and spec.end is None:
        return 0, count
    if numbers is None:
        raise EvaluationError(f"{video}: frame ranges need numeric frame file names")
    inside = [
        i
        for i, n in enumerate(numbers)
        if (spec.start is None or n >= spec.start) and (spec.end is None or n < spec.end)
    ]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def evaluate_video(job: VideoJob) -> list[ObjectScores]:
    """Score the objects of one video, each on its own frame range."""
    video = job.video
    gt_dir = Path(job.gt_root) / video.name
    pred_dir = Path(job.pred_root) / video.name
    if not gt_dir.is_dir():
        raise EvaluationError(f"ground-truth folder {gt_dir} does not exist")
    frames, numbers = _sorted_frames(gt_dir)
    count = len(frames)
    ranges: dict[int, tuple[int, int]] = {}
    groups: dict[int, bool] = {}
    if video.objects is not None:
        for spec in video.objects:
            ranges[spec.object_id] = _position_range(spec, numbers, count, video.name)
            groups[spec.object_id] = spec.unseen
    parts: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for start, stop in chunks(count):
        names = frames[start:stop]
        gt_arr = stack_masks([read_mask(gt_dir / name) for name in names], [gt_dir / n for n in names])
        pred_arr = np.stack(
            [
                read_mask_or_empty(pred_dir / name, gt.shape, gt_dir / name)
                for name, gt in zip(frames[start:stop], gt_arr)
            ]
        )
        void = None if job.void_label is None else gt_arr == job.void_label
        if video.objects is None:
            present = label_values(gt_arr)
            for obj_id in present.tolist():
                if obj_id == 0 or obj_id == job.void_label or obj_id in ranges:
                    continue
                first = start + int(np.argmax((gt_arr == obj_id).any(axis=(1, 2))))
                ranges[obj_id] = (first, count)
                groups[obj_id] = video.unseen
        for obj_id, (first, last) in ranges.items():
            lo, hi = max(first, start), min(last, stop)
            if lo >= hi:
                continue
            window = slice(lo - start, hi - start)
            j, f = score_pair(
                pred_arr[window] == obj_id,
                gt_arr[window] == obj_id,
                None if void is None else void[window],
            )
            parts.setdefault(obj_id, ([], []))
            parts[obj_id][0].append(j)
            parts[obj_id][1].append(f)
    results = []
    for obj_id in sorted(ranges):
        first, last = ranges[obj_id]
        obj_frames = frames[first:last]
        j_parts, f_parts = parts.get(obj_id, ([], []))
        j = np.concatenate(j_parts) if j_parts else np.zeros(0)
        f = np.concatenate(f_parts) if f_parts else np.zeros(0)
        if job.skip_first_and_last:
            obj_frames, j, f = obj_frames[1:-1], j[1:-1], f[1:-1]
        if len(j) == 0:
            warnings.warn(
                f"{video.name}/{obj_id}: no frame left to evaluate; object not scored", stacklevel=2
            )
            continue
        group = UNSEEN if groups[obj_id] else SEEN
        results.append(ObjectScores(video.name, str(obj_id), obj_frames, j, f, group=group))
    return results


def summarize_groups(objects: list[ObjectScores]) -> LvosSummary:
    """Seen/unseen means and the LVOS headline J, F (mean of the non-empty groups)."""
    seen = summarize([o for o in objects if o.group != UNSEEN])
    unseen = summarize([o for o in objects if o.group == UNSEEN])
    groups = [g for g in (seen, unseen) if g.num_objects]
    j = float(np.mean([g.j for g in groups])) if groups else float("nan")
    f = float(np.mean([g.f for g in groups])) if groups else float("nan")
    return LvosSummary(seen=seen, unseen=unseen, all_objects=summarize(objects), j=j, f=f)


def resolve_inputs(
    gt_root: Path, pred_root: Path, meta_json: str | Path | None, unseen_list: str | Path | None
) -> tuple[Path, list[VideoSpec]]:
    """Find the annotation folder and the videos (from the meta JSON, else the GT sub-folders)."""
    if not gt_root.is_dir():
        raise EvaluationError(f"ground-truth folder {gt_root} does not exist")
    if not pred_root.is_dir():
        raise EvaluationError(f"prediction folder {pred_root} does not exist")
    if (gt_root / "Annotations").is_dir() and not (pred_root / "Annotations").is_dir():
        if meta_json is None and (gt_root / "meta.json").is_file():
            meta_json = gt_root / "meta.json"
        gt_root = gt_root / "Annotations"
    unseen = read_unseen_list(unseen_list) if unseen_list else set()
    if meta_json is not None:
        return gt_root, load_meta(meta_json, unseen)
    return gt_root, [VideoSpec(name=name, unseen=name in unseen) for name in list_subdirs(gt_root)]


def evaluate(
    gt_root: str | Path,
    pred_root: str | Path,
    *,
    meta_json: str | Path | None = None,
    unseen_list: str | Path | None = None,
    strict: bool = False,
    skip_first_and_last: bool = False,
    void_label: int | None = DEFAULT_VOID_LABEL,
    num_processes: int = 1,
    progress: bool = False,
) -> LvosResults:
    """Evaluate ``pred_root`` against ``gt_root`` (see the module docstring)."""
    gt_path, specs = resolve_inputs(Path(gt_root), Path(pred_root), meta_json, unseen_list)
    pred_videos = set(list_subdirs(Path(pred_root)))
    missing = [s.name for s in specs if s.name not in pred_videos]
    if missing and strict:
        raise EvaluationError(f"videos without a prediction folder in {pred_root}: {missing}")
    if missing:
        warnings.warn(
            f"{len(missing)} video(s) have no prediction folder and are skipped: {missing}", stacklevel=2
        )
    specs = [s for s in specs if s.name in pred_videos]
    jobs = [VideoJob(str(gt_path), str(pred_root), spec, skip_first_and_last, void_label) for spec in specs]
    objects = [o for scores in map_videos(evaluate_video, jobs, num_processes, progress) for o in scores]
    return LvosResults(objects=objects, summary=summarize_groups(objects), videos=[s.name for s in specs])


HEADER = ["sequence", "obj", "group", "J&F", "J", "F"]


def result_rows(results: LvosResults, digits: int) -> list[list[str]]:
    """Headline, seen, unseen and all-object rows, then one row per object."""
    s = results.summary

    def numbers(jf: float, j: float, f: float) -> list[str]:
        return [format_float(jf, digits), format_float(j, digits), format_float(f, digits)]

    rows = [
        ["Global score", "", "seen+unseen", *numbers(s.jf, s.j, s.f)],
        ["Seen", "", SEEN, *numbers(s.seen.jf, s.seen.j, s.seen.f)],
        ["Unseen", "", UNSEEN, *numbers(s.unseen.jf, s.unseen.j, s.unseen.f)],
        ["All objects", "", "all", *numbers(s.all_objects.jf, s.all_objects.j, s.all_objects.f)],
    ]
    rows += [
        [o.video, o.object_id, o.group, *numbers(o.jf_mean, o.j_mean, o.f_mean)] for o in results.objects
    ]
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="LVOS / DAVIS-2017 J&F evaluator with the seen/unseen split."
    )
    parser.add_argument("--gt_root", required=True, help="annotation root ({video}/{frame}.png palette PNGs)")
    parser.add_argument("--pred_root", required=True, help="prediction root with the same layout")
    parser.add_argument(
        "--meta_json", default=None, help="LVOS-style meta JSON (objects, frame ranges, groups)"
    )
    parser.add_argument("--unseen_list", default=None, help="text file with one unseen video name per line")
    parser.add_argument(
        "--skip_first_and_last",
        action="store_true",
        help="drop each object's first and last frame (DAVIS-2017)",
    )
    parser.add_argument(
        "--void_label", type=int, default=DEFAULT_VOID_LABEL, help="GT label ignored in scoring; -1 disables"
    )
    parser.add_argument(
        "-n", "--num_processes", type=int, default=default_num_processes(), help="worker processes"
    )
    parser.add_argument(
        "-s", "--strict", action="store_true", help="error if a video has no prediction folder"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    parser.add_argument(
        "--output_csv", default=None, help="results CSV (default: {pred_root}/lvos_results.csv)"
    )
    parser.add_argument(
        "--per_frame_curve", default=None, help="write a PNG of mean J&F over normalised time"
    )
    parser.add_argument(
        "--extra_pred_roots", nargs="*", default=[], help="more prediction roots to add to the curve"
    )
    parser.add_argument("--curve_bins", type=int, default=20, help="time bins of the per-frame curve")
    return parser


def _summary_line(label: str, s: LvosSummary) -> str:
    def fmt(value: float) -> str:
        return format_float(value, 2)

    return (
        f"{label}: J&F {fmt(s.jf)}  J {fmt(s.j)}  F {fmt(s.f)}  |  J_s {fmt(s.seen.j)}  F_s {fmt(s.seen.f)}  "
        f"J_u {fmt(s.unseen.j)}  F_u {fmt(s.unseen.f)}  ({s.seen.num_objects} seen, {s.unseen.num_objects} unseen objects)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    void_label = None if args.void_label < 0 else args.void_label
    pred_roots = [args.pred_root, *args.extra_pred_roots]
    all_results: dict[str, LvosResults] = {}
    try:
        for pred_root in pred_roots:
            results = evaluate(
                args.gt_root,
                pred_root,
                meta_json=args.meta_json,
                unseen_list=args.unseen_list,
                strict=args.strict,
                skip_first_and_last=args.skip_first_and_last,
                void_label=void_label,
                num_processes=args.num_processes,
                progress=not args.quiet,
            )
            all_results[pred_root] = results
            is_main = pred_root == args.pred_root
            csv_path = (
                args.output_csv if is_main and args.output_csv else Path(pred_root) / "lvos_results.csv"
            )
            write_csv(csv_path, HEADER, result_rows(results, 6))
            if not (args.quiet or not is_main):
                print(render_table(HEADER, result_rows(results, 1)))
            print(_summary_line(str(pred_root), results.summary))
            if not args.quiet:
                print(f"results written to {csv_path}")
    except (EvaluationError, MaskError, OSError, ValueError) as err:
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
