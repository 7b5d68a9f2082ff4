"""The pathway plot: what one object's memory tree did over the frames of a run.

Built only from the :class:`~sam2long.predictor.PathwayStep` records that
``propagate_in_video(..., observer=...)`` hands out. Three panels share the frame axis: each
pathway's cumulative score, the IoU and the object-score logit of the candidate each pathway holds;
with SAMURAI's motion term a fourth shows each pathway's motion IoU (its candidate's box against the
Kalman prediction), and frames that joined DAM4SAM's distractor memory are marked in green.
Uncertain frames (every |object-score logit| <= δ_conf, so only distinct candidates were kept) are
shaded, prompted frames drawn as solid lines and the frames where all pathways coalesced (older
frames were committed) as dashed lines. Matplotlib's object API only (no pyplot state), so figures
can be drawn from several threads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

_TRACKED_KINDS = ("root", "greedy", "branch")


@dataclass(frozen=True)
class PathwaySeries:
    """One object's records as arrays: row ``t`` is frame ``frames[t]``, column ``j`` pathway ``j``
    (NaN where the tree had fewer pathways)."""

    obj_id: Any
    frames: np.ndarray  # (T,) frame indices, processing order
    scores: np.ndarray  # (T, P) cumulative scores
    ious: np.ndarray  # (T, P) IoU of each pathway's candidate
    obj_logits: np.ndarray  # (T, P) object-score logit of each pathway's candidate
    best: np.ndarray  # (T,) index of the best pathway
    uncertain_frames: tuple[int, ...]
    coalesced_frames: tuple[int, ...]  # frames on which older frames were committed
    committed_frames: tuple[int, ...]  # every frame made final (coalescence or the end)
    prompt_frames: tuple[int, ...]
    motion: np.ndarray  # (T, P) motion IoU of each pathway's candidate (NaN: none measured)
    has_motion: bool  # the tracker scores motion (SAMURAI's term), measured yet or not
    drm_frames: tuple[int, ...]  # frames some pathway added to its distractor memory

    @property
    def num_pathways(self) -> int:
        return self.scores.shape[1]


def pathway_series(records: Iterable[Any], obj_id: Any) -> PathwaySeries:
    """Collect one object's pathway records (other objects' are ignored)."""
    mine = [r for r in records if r.obj_id == obj_id]
    rows = [r for r in mine if r.frame_idx is not None and r.kind in _TRACKED_KINDS and r.scores]
    width = max((len(r.scores) for r in rows), default=0)

    def matrix(name: str) -> np.ndarray:
        out = np.full((len(rows), width), np.nan)
        for t, r in enumerate(rows):
            values = getattr(r, name)
            out[t, : len(values)] = values
        return out

    committed = sorted({f for r in mine for f in r.committed_frames})
    motion = np.full((len(rows), width), np.nan)
    drm_frames = set()
    for t, r in enumerate(rows):
        extras = r.extras or {}
        for j, note in enumerate(extras.get("motion") or []):
            if note is not None and note.get("motion_iou") is not None:
                motion[t, j] = note["motion_iou"]
        if any(note is not None and note.get("added") for note in extras.get("distractor") or []):
            drm_frames.add(r.frame_idx)
    return PathwaySeries(
        obj_id=obj_id,
        frames=np.array([r.frame_idx for r in rows], dtype=int),
        scores=matrix("scores"),
        ious=matrix("ious"),
        obj_logits=matrix("obj_logits"),
        best=np.array([-1 if r.best_pathway is None else r.best_pathway for r in rows], dtype=int),
        uncertain_frames=tuple(r.frame_idx for r in rows if r.kind == "branch" and r.certain is False),
        coalesced_frames=tuple(
            sorted({r.frame_idx for r in mine if r.frame_idx is not None and r.committed_frames})
        ),
        committed_frames=tuple(committed),
        prompt_frames=tuple(sorted({r.frame_idx for r in mine if r.kind == "prompt"})),
        motion=motion,
        has_motion=any((r.extras or {}).get("motion") is not None for r in rows),
        drm_frames=tuple(sorted(drm_frames)),
    )


def plot_pathways(records: Iterable[Any], obj_id: Any, uncertainty: Optional[float] = None) -> Figure:
    """The three-panel pathway figure of one object (a note instead when it has no records);
    ``uncertainty`` (δ_conf) draws the ±δ_conf band on the logit panel."""
    series = pathway_series(list(records), obj_id)
    has_motion = series.has_motion
    figure = Figure(figsize=(8.0, 8.0 if has_motion else 6.4), dpi=100, layout="constrained")
    axes = figure.subplots(4 if has_motion else 3, 1, sharex=True)
    if len(series.frames) == 0:
        figure.suptitle(f"object {obj_id}: no pathway records yet (propagate with SAM2Long first)")
        for ax in axes:
            ax.set_yticks([])
        return figure
    colours = [f"C{j}" for j in range(series.num_pathways)]
    panels = (
        (axes[0], series.scores, "cumulative score\nΣ log(IoU + ε)"),
        (axes[1], series.ious, "candidate IoU"),
        (axes[2], series.obj_logits, "object-score logit"),
    )
    if has_motion:
        panels += ((axes[3], series.motion, "motion IoU\n(box vs Kalman)"),)
        if not np.isfinite(series.motion).any():
            axes[3].text(0.5, 0.5, "Kalman filter warming up", transform=axes[3].transAxes, ha="center")
    for ax, values, label in panels:
        for frame in series.uncertain_frames:
            ax.axvspan(frame - 0.5, frame + 0.5, color="0.85", lw=0, zorder=0)
        for frame in series.prompt_frames:
            ax.axvline(frame, color="0.3", lw=1.2, zorder=1)
        for frame in series.coalesced_frames:
            ax.axvline(frame, color="tab:red", lw=0.9, ls="--", zorder=1)
        for frame in series.drm_frames:
            ax.axvline(frame, color="tab:green", lw=1.2, ls=":", zorder=1)
        for j in range(series.num_pathways):
            ax.plot(
                series.frames,
                values[:, j],
                marker="o",
                ms=3,
                lw=1.2,
                color=colours[j],
                label=f"pathway {j + 1}",
            )
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    best = series.best >= 0
    axes[0].scatter(
        series.frames[best],
        series.scores[np.flatnonzero(best), series.best[best]],
        s=40,
        facecolors="none",
        edgecolors="black",
        zorder=3,
        label="best",
    )
    if uncertainty is not None:
        axes[2].axhspan(-uncertainty, uncertainty, color="tab:orange", alpha=0.12, lw=0)
    axes[-1].set_xlabel("frame")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [
        Patch(color="0.85", label="uncertain frame"),
        Line2D([], [], color="tab:red", ls="--", label="pathways coalesced"),
        Line2D([], [], color="0.3", label="prompt"),
    ]
    labels += ["uncertain frame", "pathways coalesced", "prompt"]
    if series.drm_frames:
        handles.append(Line2D([], [], color="tab:green", ls=":", label="distractor memory"))
        labels.append("distractor memory")
    figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4), fontsize=8)
    axes[0].set_title(f"SAM2Long pathways of object {obj_id}", fontsize=10)
    return figure
