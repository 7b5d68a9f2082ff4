"""Per-pathway memory selection and occlusion-aware key modulation (model-free).

A pathway's history is the list of its ancestors' :class:`FrameRecord` (steps after the conditioning
frame, oldest first, the pathway's own latest step last). Steps are processing indices (0, 1, 2, ... in
tracking order, whichever the direction in the video), so nothing here knows about reverse tracking.
:func:`plan_memory` turns a history into the memory layout the memory attention needs at the current
step, :func:`memory_scores` gives the occlusion scores of that layout and :func:`modulation_weights`
the per-entry key scales.

Layout conventions (they match the official SAM2Long code and upstream SAM 2):

- spatial memory = conditioning frames (``t_pos = 0``) followed by ``plan.spatial`` (oldest first);
  an entry with ``t_pos`` uses ``maskmem_tpos_enc[num_maskmem - 1 - t_pos]``.
- object pointers = conditioning pointers followed by ``plan.pointers`` (most recent first); an entry's
  ``position`` is its temporal distance fed to the pointer sine encoding (divided by ``max_ptrs - 1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sam2.modeling.memory import recent_memory_slots

COND_FRAME_SCORE = 10.0
"""Occlusion score the official code assigns to conditioning frames/pointers for the modulation ranking."""


@dataclass(frozen=True)
class FrameRecord:
    """What a pathway chose at one step: tree node id, predicted IoU of the chosen candidate, the
    object-score (occlusion) logit of the decoder run that produced it and, with SAMURAI's motion model
    past its warm-up, the chosen candidate's motion IoU."""

    step: int
    node: int
    iou: float
    obj_logit: float
    motion: float | None = None
    visible: bool = True  # the chosen mask has a pixel (DAM4SAM remembers only such frames)


@dataclass(frozen=True)
class MemoryRef:
    """One memory entry: the step/node to read features from, its temporal position and its occlusion score."""

    step: int
    node: int
    position: int
    obj_logit: float


@dataclass(frozen=True)
class MemoryPlan:
    """Memory layout of one pathway at one frame (non-conditioning part only).

    Attributes:
        kept: the selected frames (official ``valid_indices``), oldest first.
        spatial: spatial memory entries, oldest first; ``position`` is ``t_pos`` in ``1..num_maskmem-1``.
        pointers: object-pointer entries, most recent first; ``position`` is the temporal distance.
    """

    kept: tuple[FrameRecord, ...]
    spatial: tuple[MemoryRef, ...]
    pointers: tuple[MemoryRef, ...]


MEMORY_RULES = ("sam2long", "samurai", "dam4sam")
"""How a pathway selects its memory frames (with selection on): SAM2Long's (reliable frames, pointers
from them), SAMURAI's (reliable frames, motion score too, from the second tracked frame on; pointers
of the most recent frames, as SAM 2) or DAM4SAM's (a distractor-resolving memory next to the recent
visible frames: :mod:`sam2long.distractor`, planned by the tracker)."""


def is_reliable(record: FrameRecord, iou_threshold: float, motion_threshold: float | None = None) -> bool:
    """Official eligibility test of a past frame: IoU strictly above the threshold and object present;
    with ``motion_threshold`` (SAMURAI) also a motion IoU above it, where one was measured."""
    if not (record.iou > iou_threshold and record.obj_logit > 0):
        return False
    return motion_threshold is None or record.motion is None or record.motion > motion_threshold


def pointer_budget(max_obj_ptrs_in_encoder: int, num_frames: int) -> int:
    """``M = min(num_frames, max_obj_ptrs_in_encoder)`` as in SAM 2 / SAM2Long (depends on video length)."""
    return min(num_frames, max_obj_ptrs_in_encoder)


def _check_history(history: Sequence[FrameRecord], step: int) -> None:
    previous = None
    for record in history:
        if previous is not None and record.step <= previous:
            raise ValueError("history must be sorted by strictly increasing step")
        previous = record.step
    if previous is not None and previous >= step:
        raise ValueError(f"history reaches step {previous}, not before the current step {step}")


def plan_memory(
    history: Sequence[FrameRecord],
    step: int,
    *,
    num_maskmem: int,
    max_obj_ptrs_in_encoder: int,
    num_frames: int,
    iou_threshold: float,
    selection: bool = True,
    rule: str = "sam2long",
    motion_threshold: float = 0.0,
    first_step: int = 0,
) -> MemoryPlan:
    """Choose the non-conditioning memory of one pathway for step ``step``.

    Args:
        history: the pathway's ancestry after the conditioning frame, oldest first; the last record is the
            pathway's choice at the previous step. May have gaps where committed history was compacted
            (see :func:`history_retention`) or frames were skipped. Empty for the first step after the
            conditioning frame.
        step: current step.
        num_maskmem: model's ``num_maskmem`` (conditioning slot + ``num_maskmem - 1`` recent frames).
        max_obj_ptrs_in_encoder: model's ``max_obj_ptrs_in_encoder``.
        num_frames: number of frames in the video (bounds the pointer budget, as upstream).
        iou_threshold: reliability threshold (strict).
        selection: True → official SAM2Long selection; False → SAM 2's recent-memory rule
            (:func:`sam2.modeling.memory.recent_memory_slots`, the same code SAM 2 runs over its session's
            frames) over the pathway's steps, which reproduces upstream SAM 2 for a single pathway.
        rule: with selection, ``"sam2long"`` or ``"samurai"`` (:data:`MEMORY_RULES`).
        motion_threshold: SAMURAI's motion-score threshold for memory frames.
        first_step: SAMURAI only: the step of the conditioning frame; as the official code (which
            starts at frame 0 and looks back to frame 2), the first tracked frame after it is remembered
            only as the latest frame.

    With ``selection=True`` the walk goes back from the latest frame, keeping reliable frames until
    ``M - 1`` are kept (``M`` from :func:`pointer_budget`), then always adds the latest frame. Spatial
    memory = the last ``num_maskmem - 1`` kept frames with ``t_pos`` by rank; pointers = the kept frames
    most-recent-first with distance = rank, but — as in the official code — never the oldest kept frame
    (``min(len(kept) - 1, M - 1)`` pointers).
    """
    if num_maskmem < 1:
        raise ValueError(f"num_maskmem must be >= 1, got {num_maskmem}")
    _check_history(history, step)
    budget = pointer_budget(max_obj_ptrs_in_encoder, num_frames)
    if not history:
        return MemoryPlan(kept=(), spatial=(), pointers=())
    if rule not in MEMORY_RULES:
        raise ValueError(f"unknown memory rule {rule!r}; choose one of {list(MEMORY_RULES)}")
    if not selection:
        return _plan_recent(history, step, num_maskmem, budget)
    if rule == "samurai":
        return _plan_samurai(history, step, num_maskmem, budget, iou_threshold, motion_threshold, first_step)
    return _plan_selected(history, num_maskmem, budget, iou_threshold)


def _ref(record: FrameRecord, position: int) -> MemoryRef:
    return MemoryRef(step=record.step, node=record.node, position=position, obj_logit=record.obj_logit)


def _keep_reliable(
    history: Sequence[FrameRecord], budget: int, reliable: Callable[[FrameRecord], bool], first_step: int = -1
) -> list[FrameRecord]:
    """The official walk back from the latest frame: keep reliable frames (not before ``first_step``)
    until ``M - 1`` are kept, then always add the latest frame; oldest first."""
    kept: list[FrameRecord] = []
    for record in reversed(history):
        if record.step < first_step:
            break
        if reliable(record):
            kept.append(record)
        if len(kept) >= budget - 1:
            break
    kept.reverse()
    latest = history[-1]
    if not kept or kept[-1].step != latest.step:
        kept.append(latest)
    return kept


def _spatial_by_rank(kept: list[FrameRecord], num_maskmem: int) -> tuple[MemoryRef, ...]:
    """The last ``num_maskmem - 1`` kept frames, ``t_pos`` by rank (the latest is the newest slot)."""
    return tuple(_ref(kept[-rank], num_maskmem - rank) for rank in range(min(num_maskmem - 1, len(kept)), 0, -1))


def _plan_selected(
    history: Sequence[FrameRecord], num_maskmem: int, budget: int, iou_threshold: float
) -> MemoryPlan:
    kept = _keep_reliable(history, budget, lambda record: is_reliable(record, iou_threshold))
    num_ptrs = max(0, min(len(kept) - 1, budget - 1))
    pointers = [_ref(kept[-t_diff], t_diff) for t_diff in range(1, num_ptrs + 1)]
    return MemoryPlan(kept=tuple(kept), spatial=_spatial_by_rank(kept, num_maskmem), pointers=tuple(pointers))


def _plan_samurai(
    history: Sequence[FrameRecord],
    step: int,
    num_maskmem: int,
    budget: int,
    iou_threshold: float,
    motion_threshold: float,
    first_step: int,
) -> MemoryPlan:
    """SAMURAI: SAM2Long's walk back with the motion score in the test and from the second tracked frame
    on; pointers = SAM 2's most recent frames."""
    kept = _keep_reliable(
        history, budget, lambda record: is_reliable(record, iou_threshold, motion_threshold), first_step + 2
    )
    pointers = _plan_recent(history, step, num_maskmem, budget).pointers
    return MemoryPlan(kept=tuple(kept), spatial=_spatial_by_rank(kept, num_maskmem), pointers=pointers)


def _plan_recent(history: Sequence[FrameRecord], step: int, num_maskmem: int, budget: int) -> MemoryPlan:
    by_step = {record.step: record for record in history}
    spatial_slots, pointer_slots = recent_memory_slots(step, num_maskmem, budget, num_frames=step)
    spatial = [_ref(by_step[s], t_pos) for t_pos, s in spatial_slots if s in by_step]
    pointers = [_ref(by_step[s], t_diff) for t_diff, s in pointer_slots if s in by_step]
    oldest = step - max(num_maskmem - 1, budget - 1)
    kept = tuple(r for r in history if r.step >= oldest)
    return MemoryPlan(kept=kept, spatial=tuple(spatial), pointers=tuple(pointers))


def history_retention(
    *,
    num_maskmem: int,
    max_obj_ptrs_in_encoder: int,
    num_frames: int,
    iou_threshold: float,
    selection: bool = True,
    rule: str = "sam2long",
    motion_threshold: float = 0.0,
) -> tuple[int, Callable[[FrameRecord], bool] | None, int]:
    """How much committed history a pathway tree must keep so that :func:`plan_memory` is unaffected.

    Returns ``(size, predicate, recent)`` for :class:`sam2long.tree.PathwayTree`: besides the latest
    committed record, keep the ``size`` most recent committed records satisfying ``predicate`` (``None`` =
    all) and the ``recent`` most recent ones. With selection, non-reliable frames are never chosen unless
    they are a pathway's latest frame, so only reliable ones need keeping (SAMURAI's pointers also read
    the most recent frames); without it, only the most recent frames matter.
    """
    size = max(num_maskmem - 1, pointer_budget(max_obj_ptrs_in_encoder, num_frames))
    if not selection:
        return size, None, 0
    if rule == "samurai":
        return size, lambda record: is_reliable(record, iou_threshold, motion_threshold), size
    return size, lambda record: is_reliable(record, iou_threshold), 0


def rank_weights(scores: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Assign ``linspace(low, high, n)`` by ascending score along the last dim (lowest score → ``low``).

    The weights are computed in float32 and returned in ``scores.dtype`` (the official code casts the
    linspace to the dtype of the stacked scores, bf16 under CUDA autocast). Ties are broken by position
    (stable sort); the official ``torch.argsort`` leaves tie order unspecified.
    """
    n = scores.shape[-1]
    standard = torch.linspace(low, high, n, dtype=torch.float32, device=scores.device).to(scores.dtype)
    order = torch.sort(scores, dim=-1, stable=True).indices
    weights = torch.empty_like(scores)
    return weights.scatter_(-1, order, standard.expand_as(scores).contiguous())


def modulation_weights(
    frame_scores: torch.Tensor,
    pointer_scores: torch.Tensor | None,
    modulation: tuple[float, float] | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Key weights for the memory frames and the object pointers of one memory bank.

    Args:
        frame_scores: ``[..., F]`` occlusion scores of all spatial memory frames in concatenation order,
            conditioning frames included (use :data:`COND_FRAME_SCORE` for them).
        pointer_scores: ``[..., Q]`` the same for the object pointers, or ``None``/empty without pointers.
        modulation: ``(w_low, w_high)`` or ``None`` (off).

    Returns ``(frame_weights, pointer_weights)``; ``(None, None)`` means "do not scale". As in the official
    code, nothing is scaled when there is a single spatial memory frame, and a single pointer next to
    several frames gets weight ``w_low``.
    """
    if modulation is None or frame_scores.shape[-1] <= 1:
        return None, None
    low, high = modulation
    frame_weights = rank_weights(frame_scores, low, high)
    if pointer_scores is None or pointer_scores.shape[-1] == 0:
        return frame_weights, None
    return frame_weights, rank_weights(pointer_scores, low, high)


def memory_scores(
    plan: MemoryPlan, cond_frames: int = 1, cond_pointers: int | None = None
) -> tuple[list[float], list[float]]:
    """Occlusion scores in concatenation order for a plan: ``(frame_scores, pointer_scores)``.

    Conditioning entries (``cond_frames`` spatial, ``cond_pointers`` pointers, default the same count)
    get :data:`COND_FRAME_SCORE`; the official code supports one conditioning frame and adds exactly one.
    """
    if cond_pointers is None:
        cond_pointers = cond_frames
    frame_scores = [COND_FRAME_SCORE] * cond_frames + [ref.obj_logit for ref in plan.spatial]
    pointer_scores = [COND_FRAME_SCORE] * cond_pointers + [ref.obj_logit for ref in plan.pointers]
    return frame_scores, pointer_scores
