"""Re-prompting from a detector: when a tracked object is lost, prompt it again with a detected box.

The SAM2-LongVideo recipe: a detector (a *box source*) is asked for boxes on a frame, and the box of
the right object becomes a box prompt there, i.e. a conditioning frame (SAM2Long's tree collapses onto
it). When to ask and which box to take is a :class:`RepromptPolicy`; :class:`Reprompter` keeps the
per-object bookkeeping over plain numbers (object-score logits, boxes) and has no model in it.
:func:`propagate_with_reprompts` glues it to a predictor through ``propagate_in_video``'s
``before_frame`` hook, so the prompt lands on the frame the policy names, before it is processed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch

from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.session import InferenceSession
from sam2.tracker import TrackStep
from sam2.utils.frame_sources import FrameSource

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in video pixels
Label = Union[int, str, None]


@dataclass(frozen=True)
class Detection:
    """One box of a box source."""

    box: Box
    score: float
    label: Label = None


class BoxSource(Protocol):
    """Anything that finds boxes on an RGB frame (``(H, W, 3)`` uint8) with its index."""

    def __call__(self, frame: np.ndarray, frame_idx: int) -> Sequence[Detection]: ...


@dataclass(frozen=True)
class RepromptPolicy:
    """When to ask the box source and which of its boxes to use.

    Args:
        absent_frames: ask once an object's best pathway has reported it absent (object-score logit
            <= 0) on this many consecutive frames (``None``: never for that reason).
        every: also ask every this many frames after the object's last prompt, as SAM2-LongVideo does at
            the start of each sub-sequence (``None``: never).
        min_score: ignore boxes scored below this.
        same_class: only boxes of the object's class (given, or learned from the box that best matches
            its first prompt).
        min_iou: with a last confident box of the object known, only boxes overlapping it by at least
            this IoU (0 accepts a box anywhere: the object may have moved while it was lost).
    """

    absent_frames: Optional[int] = 5
    every: Optional[int] = None
    min_score: float = 0.5
    same_class: bool = True
    min_iou: float = 0.0

    def __post_init__(self) -> None:
        for name in ("absent_frames", "every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"RepromptPolicy.{name} must be an int >= 1 or None, got {value!r}")
        if self.absent_frames is None and self.every is None:
            raise ValueError("RepromptPolicy needs absent_frames or every (or both)")
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f"RepromptPolicy.min_iou must be in [0, 1], got {self.min_iou}")


@dataclass(frozen=True)
class Reprompt:
    """A box prompt the policy placed: the run summary's log line."""

    frame_idx: int
    obj_id: Any
    box: Box
    score: float
    label: Label
    reason: str  # "absent" or "periodic"


def box_iou(a: Box, b: Box) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_box(mask: np.ndarray) -> Optional[Box]:
    """Bounding box of a boolean mask (pixel edges), or None if it is empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


@dataclass
class _ObjectRecord:
    label: Label = None
    label_known: bool = False
    last_box: Optional[Box] = None  # latest box of a frame where the object was present
    absent_run: int = 0  # consecutive frames reported absent
    last_prompt: Optional[int] = None  # frame of the latest prompt (user or re-prompt)
    seen_since_prompt: int = 0  # frames processed since then


@dataclass
class Reprompter:
    """Per-object state of a :class:`RepromptPolicy` (no model: observations in, decisions out)."""

    policy: RepromptPolicy
    objects: dict[Any, _ObjectRecord] = field(default_factory=dict)
    log: list[Reprompt] = field(default_factory=list)
    queries: int = 0  # box source calls

    def _record(self, obj_id: Any) -> _ObjectRecord:
        return self.objects.setdefault(obj_id, _ObjectRecord())

    def knows_label(self, obj_id: Any) -> bool:
        return self._record(obj_id).label_known

    def set_label(self, obj_id: Any, label: Label) -> None:
        record = self._record(obj_id)
        record.label, record.label_known = label, True

    def prompted(self, obj_id: Any, frame_idx: int) -> None:
        """The object got a prompt on ``frame_idx`` (its counters restart)."""
        record = self._record(obj_id)
        record.last_prompt, record.seen_since_prompt, record.absent_run = frame_idx, 0, 0

    def observe(self, obj_id: Any, obj_logit: float) -> None:
        """The object's best pathway on a processed frame: present if its object-score logit > 0."""
        record = self._record(obj_id)
        record.seen_since_prompt += 1
        record.absent_run = 0 if obj_logit > 0 else record.absent_run + 1

    def observe_box(self, obj_id: Any, box: Optional[Box]) -> None:
        """A final mask's box (None if the mask is empty): the reference for choosing detections."""
        if box is not None:
            self._record(obj_id).last_box = box

    def due(self, obj_id: Any) -> Optional[str]:
        """Why the object should be re-prompted on the next frame ("absent" / "periodic"), or None."""
        record = self._record(obj_id)
        if record.last_prompt is None:
            return None
        if self.policy.absent_frames is not None and record.absent_run >= self.policy.absent_frames:
            return "absent"
        if self.policy.every is not None and record.seen_since_prompt >= self.policy.every:
            return "periodic"
        return None

    def asked(self, obj_id: Any) -> None:
        """The box source was asked for the object and gave nothing usable: wait as long again."""
        record = self._record(obj_id)
        record.absent_run, record.seen_since_prompt = 0, 0

    def choose(self, obj_id: Any, detections: Sequence[Detection]) -> Optional[Detection]:
        """The detection to prompt the object with: of its class, scored >= ``min_score``, overlapping its
        last confident box the most (then the highest score)."""
        record, policy = self._record(obj_id), self.policy
        best, best_key = None, None
        for det in detections:
            if det.score < policy.min_score:
                continue
            if (
                policy.same_class
                and record.label_known
                and record.label is not None
                and det.label != record.label
            ):
                continue
            overlap = box_iou(det.box, record.last_box) if record.last_box is not None else 0.0
            if record.last_box is not None and overlap < policy.min_iou:
                continue
            key = (overlap, det.score)
            if best_key is None or key > best_key:
                best, best_key = det, key
        return best

    def learn_label(self, obj_id: Any, box: Box, detections: Sequence[Detection]) -> None:
        """The object's class: that of the detection matching its prompted box best (IoU >= 0.5)."""
        if self._record(obj_id).label_known:
            return
        matches = [(box_iou(d.box, box), d) for d in detections]
        matches = [(iou, d) for iou, d in matches if iou >= 0.5]
        if matches:
            self.set_label(obj_id, max(matches, key=lambda m: (m[0], m[1].score))[1].label)


def _prompt_box(
    predictor: SAM2VideoPredictor, state: InferenceSession, obj_id: Any, frame_idx: int
) -> Optional[Box]:
    """Box of an object's prompted mask on a frame."""
    mask = predictor.prompt_masks(state, obj_id, frame_idx)
    return None if mask is None else mask_box(mask[0, 0].cpu().numpy() > 0)


def propagate_with_reprompts(
    predictor: SAM2VideoPredictor,
    state: InferenceSession,
    source: FrameSource,
    box_source: BoxSource,
    policy: RepromptPolicy,
    reprompter: Optional[Reprompter] = None,
    labels: Optional[dict[Any, Label]] = None,
    **propagate_kw: Any,
) -> Iterator[tuple[int, list[Any], torch.Tensor]]:
    """``propagate_in_video`` that re-prompts lost objects with boxes from ``box_source``.

    ``source`` gives the RGB frames the box source sees (the session's video). ``labels`` maps object
    ids to their class; objects without one learn it from the box source on their first prompted frame.
    Every re-prompt is appended to ``reprompter.log`` (pass your own :class:`Reprompter` to read it; its
    policy is then used and ``policy`` is ignored).
    """
    rep = reprompter if reprompter is not None else Reprompter(policy)
    for obj_id, label in (labels or {}).items():
        rep.set_label(obj_id, label)
    user_observer = propagate_kw.pop("observer", None)

    def observer(step: TrackStep) -> None:
        if step.frame_idx is not None:
            if step.kind == "prompt":
                rep.prompted(step.obj_id, step.frame_idx)
            elif step.kind != "absent" and step.best_pathway is not None:
                rep.observe(step.obj_id, step.obj_logits[step.best_pathway])
        if user_observer is not None:
            user_observer(step)

    def before_frame(frame_idx: int) -> None:
        detections: Optional[Sequence[Detection]] = None

        def detect() -> Sequence[Detection]:
            nonlocal detections
            if detections is None:
                detections = list(box_source(source.get(frame_idx), frame_idx))
                rep.queries += 1
            return detections

        for obj_id in state.obj_ids:
            if rep.policy.same_class and not rep.knows_label(obj_id):
                box = _prompt_box(predictor, state, obj_id, frame_idx)
                if box is not None:
                    rep.learn_label(obj_id, box, detect())
            reason = rep.due(obj_id)
            if reason is None:
                continue
            chosen = rep.choose(obj_id, detect())
            if chosen is None:
                rep.asked(obj_id)
                continue
            predictor.add_new_points_or_box(state, frame_idx, obj_id, box=list(chosen.box))
            rep.log.append(Reprompt(frame_idx, obj_id, chosen.box, chosen.score, chosen.label, reason))
            rep.prompted(obj_id, frame_idx)

    steps = predictor.propagate_in_video(state, before_frame=before_frame, observer=observer, **propagate_kw)
    for frame_idx, obj_ids, masks in steps:
        for i, obj_id in enumerate(obj_ids):
            rep.observe_box(obj_id, mask_box((masks[i, 0] > 0).cpu().numpy()))
        yield frame_idx, obj_ids, masks


def reprompt_log(reprompter: Reprompter) -> list[dict]:
    """The re-prompts as JSON-ready records (for the run summary)."""
    return [
        {**asdict(r), "box": [round(v, 1) for v in r.box], "score": round(float(r.score), 4)}
        for r in reprompter.log
    ]
