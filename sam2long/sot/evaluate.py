"""One-pass evaluation (OPE) of box trackers, as pytracking's analysis computes it (the numbers
SAMURAI and HiM2SAM report), and GOT-10k's AO / SR as the ``got10k`` toolkit computes them.

Per sequence (pytracking's ``calc_seq_err_robust``): results with NaN or negative sizes are refused,
and NaN in the ground truth outside UAV123;
a predicted box of zero width or height takes the previous predicted box (where the ground truth is
annotated); a longer result is cut, a shorter one padded with zero boxes (refused on LaSOT); frame 0
is set to the ground truth. A frame is valid when its ground-truth box has positive width and height
and, on datasets with visibility flags (LaSOT, LaSOT-ext: neither fully occluded nor out of view),
the target is visible. Invalid frames never succeed in the success plot and count as failures in the
centre-error plot (UAV123 counts them as successes, as pytracking does); the normalised centre error
of an invalid frame is -1 (a success), except that LaSOT's invisible frames are failures. Every
frame stays in the denominator.

Curves per sequence: success at IoU thresholds ``0:0.05:1`` (IoU strictly above), precision at
centre-error thresholds 0..50 px, normalised precision at 0..0.5 (error at most the threshold).
They are averaged over sequences (each sequence weighs the same); AUC is the success curve's mean,
precision its value at 20 px, normalised precision at 0.2, all in percent. Boxes are pixel boxes:
a box ``(x, y, w, h)`` covers pixels ``x .. x + w - 1`` (the IoU and centres use that convention).

GOT-10k (:func:`got10k_ious`): IoU of continuous rectangles clipped to the image, frame 0 left out,
only frames with ``cover > 0``; AO, SR0.5 and SR0.75 over all those frames of all sequences.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sam2long.mask_io import atomic_write, atomic_write_json, atomic_write_text
from sam2long.sot.datasets import SotInputError, SotSequence, get_dataset, load_sequence, sequence_names
from sam2long.sot.results import read_result

OVERLAP_THRESHOLDS = np.arange(21, dtype=np.float64) * 0.05
CENTER_THRESHOLDS = np.arange(51, dtype=np.float64)
NORM_THRESHOLDS = np.arange(51, dtype=np.float64) / 100.0
PRECISION_AT = 20  # index of 20 px and of 0.2 in the centre thresholds


def pixel_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of pixel boxes ``(N, 4)`` (pytracking's ``calc_iou_overlap``)."""
    tl = np.maximum(pred[:, :2], gt[:, :2])
    br = np.minimum(pred[:, :2] + pred[:, 2:] - 1.0, gt[:, :2] + gt[:, 2:] - 1.0)
    intersection = np.clip(br - tl + 1.0, 0, None).prod(axis=1)
    union = pred[:, 2:].prod(axis=1) + gt[:, 2:].prod(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersection / union


def center_error(pred: np.ndarray, gt: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Distance between box centres, in pixels or in units of the ground-truth size."""
    pred_center = pred[:, :2] + 0.5 * (pred[:, 2:] - 1.0)
    gt_center = gt[:, :2] + 0.5 * (gt[:, 2:] - 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # unannotated frames: replaced by the caller
        if normalized:
            pred_center, gt_center = pred_center / gt[:, 2:], gt_center / gt[:, 2:]
        return np.sqrt(((pred_center - gt_center) ** 2).sum(axis=1))


def sequence_errors(
    pred: np.ndarray, gt: np.ndarray, dataset: str, visible: Optional[np.ndarray], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame ``(IoU, centre error, normalised centre error)`` with the invalid-frame rules of
    the module docstring."""
    pred = np.array(pred, dtype=np.float64)
    if np.isnan(pred).any() or (pred[:, 2:] < 0).any():
        raise SotInputError(f"sequence {name!r}: the result holds NaN or a negative width/height")
    gt_annotated = ~np.isnan(gt).any(axis=1)
    if dataset != "uav123" and not gt_annotated.all():
        raise SotInputError(f"sequence {name!r}: NaN in the ground truth (only UAV123 marks absence so)")
    for i in range(1, len(pred)):
        if (pred[i, 2:] == 0).any() and i < len(gt) and gt_annotated[i]:
            pred[i] = pred[i - 1]
    if len(pred) > len(gt):
        pred = pred[: len(gt)]
    elif len(pred) < len(gt):
        if dataset == "lasot":
            raise SotInputError(f"sequence {name!r}: {len(pred)} result boxes for {len(gt)} frames")
        pred = np.concatenate([pred, np.zeros((len(gt) - len(pred), 4))])
    pred[0] = gt[0]
    with np.errstate(invalid="ignore"):
        valid = (gt[:, 2:] > 0).all(axis=1)
    if visible is not None:
        valid &= visible
    overlap = pixel_iou(pred, gt)
    center = center_error(pred, gt)
    norm = center_error(pred, gt, normalized=True)
    center[~valid] = -1.0 if dataset == "uav123" else np.inf
    norm[~valid] = -1.0
    overlap[~valid] = -1.0
    if dataset == "lasot" and visible is not None:
        norm[~visible] = np.inf
        center[~visible] = np.inf
    if np.isnan(overlap).any():
        raise SotInputError(f"sequence {name!r}: the IoU is undefined on some frame (empty boxes)")
    return overlap, center, norm


@dataclass
class Curves:
    """A sequence's (or the average) success, precision and normalised precision curves, in percent."""

    success: np.ndarray
    precision: np.ndarray
    norm_precision: np.ndarray

    @property
    def scores(self) -> dict[str, float]:
        return {
            "auc": float(self.success.mean()),
            "precision": float(self.precision[PRECISION_AT]),
            "norm_precision": float(self.norm_precision[PRECISION_AT]),
        }


def sequence_curves(overlap: np.ndarray, center: np.ndarray, norm: np.ndarray) -> Curves:
    frames = len(overlap)
    return Curves(
        success=100.0 * (overlap[:, None] > OVERLAP_THRESHOLDS[None]).sum(0) / frames,
        precision=100.0 * (center[:, None] <= CENTER_THRESHOLDS[None]).sum(0) / frames,
        norm_precision=100.0 * (norm[:, None] <= NORM_THRESHOLDS[None]).sum(0) / frames,
    )


def got10k_ious(pred: np.ndarray, seq: SotSequence) -> np.ndarray:
    """GOT-10k's IoUs of a sequence: frames 1.. with ``cover > 0``, rectangles clipped to the image."""
    if seq.resolution is None or seq.cover is None:
        raise SotInputError(f"sequence {seq.name!r}: GOT-10k's AO needs meta_info.ini and cover.label")
    if pred.shape != seq.boxes.shape:
        raise SotInputError(
            f"sequence {seq.name!r}: result {pred.shape} and ground truth {seq.boxes.shape} differ"
        )
    width, height = seq.resolution

    def clipped(boxes: np.ndarray) -> np.ndarray:
        boxes = np.array(boxes[1:], dtype=np.float64)
        boxes[:, 0] = np.clip(boxes[:, 0], 0, width)
        boxes[:, 1] = np.clip(boxes[:, 1], 0, height)
        boxes[:, 2] = np.clip(boxes[:, 2], 0, width - boxes[:, 0])
        boxes[:, 3] = np.clip(boxes[:, 3], 0, height - boxes[:, 1])
        return boxes

    a, b = clipped(pred), clipped(seq.boxes)
    sizes = np.clip(
        np.minimum(a[:, :2] + a[:, 2:], b[:, :2] + b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None
    )
    inter = sizes.prod(axis=1)
    union = a[:, 2:].prod(axis=1) + b[:, 2:].prod(axis=1) - inter
    ious = np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)
    return ious[seq.cover[1:] > 0]


@dataclass
class TrackerScores:
    """One result folder's scores on a dataset."""

    name: str
    pred_root: Path
    per_sequence: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: Optional[Curves] = None
    got10k: Optional[dict[str, float]] = None
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        scores = self.curves.scores if self.curves is not None else {}
        return {
            "name": self.name,
            "pred_root": str(self.pred_root),
            "sequences": len(self.per_sequence),
            **scores,
            **(self.got10k or {}),
            "errors": self.errors,
            "per_sequence": self.per_sequence,
        }


def evaluate_tracker(
    dataset: str, sequences: Sequence[SotSequence], pred_root: Path, name: str
) -> TrackerScores:
    """OPE (and GOT-10k's AO on ``got10k_val``) of one result folder; a missing or bad result is
    recorded in ``errors`` and the other sequences are scored."""
    layout = get_dataset(dataset).layout
    scores = TrackerScores(name, Path(pred_root))
    all_curves, ious = [], []
    for seq in sequences:
        try:
            pred = read_result(pred_root, layout, seq.name)
            visible = seq.visible if dataset in ("lasot", "lasot_ext") else None
            curves = sequence_curves(*sequence_errors(pred, seq.boxes, dataset, visible, seq.name))
            entry = {"frames": len(seq.boxes), **curves.scores}
            if dataset == "got10k_val":
                seq_ious = got10k_ious(pred, seq)
                ious.append(seq_ious)
                entry["ao"] = float(100.0 * seq_ious.mean()) if seq_ious.size else None
        except SotInputError as error:
            scores.errors[seq.name] = str(error)
            continue
        all_curves.append(curves)
        scores.per_sequence[seq.name] = entry
    if all_curves:
        scores.curves = Curves(
            *(np.mean([getattr(c, f) for c in all_curves], axis=0) for f in Curves.__annotations__)
        )
    if ious:
        joined = np.concatenate(ious)
        scores.got10k = {
            "ao": float(100.0 * joined.mean()),
            "sr50": float(100.0 * (joined > 0.5).mean()),
            "sr75": float(100.0 * (joined > 0.75).mean()),
        }
    return scores


def load_ground_truth(dataset: str, gt_root: Path, seq_list: Optional[Path]) -> list[SotSequence]:
    """Every listed sequence with a full annotation (GOT-10k test and TrackingNet test publish only
    the first box: those are scored by the servers)."""
    sequences = [load_sequence(dataset, gt_root, name) for name in sequence_names(dataset, gt_root, seq_list)]
    first_only = [s.name for s in sequences if len(s.boxes) == 1 and len(s.frames) > 1]
    if first_only:
        raise SotInputError(
            f"{len(first_only)} {dataset} sequences (e.g. {first_only[0]!r}) have only the first box; "
            "their results are scored by the benchmark's server"
        )
    return sequences


def tracker_names(pred_roots: Sequence[Path]) -> list[str]:
    """Curve labels: the folder names, made unique."""
    names: list[str] = []
    for root in pred_roots:
        base = Path(root).resolve().name or str(root)
        names.append(base if base not in names else f"{base}_{len(names)}")
    return names


def write_csv(path: Path, dataset: str, results: Sequence[TrackerScores]) -> None:
    columns = ["tracker", "sequence", "frames", "auc", "precision", "norm_precision"]
    if dataset == "got10k_val":
        columns.append("ao")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for result in results:
        for seq, entry in result.per_sequence.items():
            writer.writerow({"tracker": result.name, "sequence": seq, **entry})
    atomic_write_text(path, buffer.getvalue())


def write_plots(folder: Path, dataset: str, results: Sequence[TrackerScores]) -> list[Path]:
    """Success and precision plots (PNG), one curve per result folder, scores in the legend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SotInputError("the plots need matplotlib: pip install -e '.[sot]' (or --no_plots)") from error

    plots = (
        ("success", OVERLAP_THRESHOLDS, "success", "overlap threshold (IoU)", "auc"),
        ("precision", CENTER_THRESHOLDS, "precision", "location error threshold (px)", "precision"),
        (
            "norm_precision",
            NORM_THRESHOLDS,
            "norm_precision",
            "normalised location error threshold",
            "norm_precision",
        ),
    )
    written = []
    for title, xs, attr, xlabel, score in plots:
        figure, axes = plt.subplots(figsize=(5, 4))
        for result in results:
            if result.curves is not None:
                label = f"{result.name} [{result.curves.scores[score]:.1f}]"
                axes.plot(xs, getattr(result.curves, attr), label=label)
        axes.set(title=f"{dataset}: {title} plot (OPE)", xlabel=xlabel, ylabel=f"{title} (%)", ylim=(0, 100))
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower left" if attr == "success" else "lower right")
        path = Path(folder) / f"{dataset}_{title}.png"
        atomic_write(path, lambda handle, fig=figure: fig.savefig(handle, format="png", dpi=100))
        plt.close(figure)
        written.append(path)
    return written


def evaluate(
    dataset: str,
    gt_root: Path,
    pred_roots: Sequence[Path],
    seq_list: Optional[Path] = None,
) -> tuple[dict[str, Any], list[TrackerScores]]:
    """Score every result folder; the JSON payload holds the first folder's ``auc``, ``precision``,
    ``norm_precision`` (percent; ``ao``, ``sr50``, ``sr75`` on GOT-10k val) and ``per_sequence`` at
    its top, and every folder under ``trackers``."""
    sequences = load_ground_truth(dataset, gt_root, seq_list)
    results = [
        evaluate_tracker(dataset, sequences, root, name)
        for root, name in zip(pred_roots, tracker_names(pred_roots))
    ]
    payload = {"dataset": dataset, "gt_root": str(gt_root), **results[0].summary()}
    payload["trackers"] = [r.summary() for r in results]
    return payload, results


def write_reports(
    output_json: Path, payload: dict[str, Any], results: Sequence[TrackerScores], plots: bool
) -> None:
    """The JSON, the per-sequence CSV beside it, and the plots (PNG) beside it."""
    output_json = Path(output_json)
    atomic_write_json(output_json, payload)
    dataset = payload["dataset"]
    write_csv(output_json.with_suffix(".csv"), dataset, results)
    if plots:
        write_plots(output_json.parent, dataset, results)
