"""The tracker interface, and SAM 2's own tracker.

A *tracker* is a training-free way of choosing what each object remembers while a video is propagated.
The propagation loop (:mod:`sam2.propagation`) owns everything else (frames, prompts, batching the model
over all objects, outputs, the order frames are yielded in) and asks the tracker, per object and frame:

1. :meth:`ObjectTracker.memories`: the memory of each of the object's batch *rows* (SAM 2: one row with
   the session's memory; SAM2Long: one row per distinct memory pathway);
2. :meth:`ObjectTracker.choose`: given every row's candidate masks (predicted IoUs, object-score logit),
   which candidates to remember (the loop runs the memory encoder on them in one batch);
3. :meth:`ObjectTracker.remember`: the encoded memories of those picks; returns which frames became
   *final* (SAM 2: this one, at once; the tree: frames on which all pathways agree, or ``max_lag``).

plus :meth:`~ObjectTracker.prompted` on conditioning frames, :meth:`~ObjectTracker.absent` before an
object joins and :meth:`~ObjectTracker.finish` at the end. Every call may return a :class:`TrackStep`,
the record the ``observer`` of ``propagate_in_video`` receives (for re-prompting, plots and analysis),
so nothing downstream branches on the tracker's type.

A :class:`Tracker` holds a method's settings and makes one :class:`ObjectTracker` per object and
propagation; the loop gives it a :class:`PropagationRun` (the model's engine calls, the session, the
timeline).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from sam2.engine import NewMemories, Timeline
from sam2.modeling.memory import ItemMemory

if TYPE_CHECKING:
    from sam2.sam2_video_predictor import SAM2VideoPredictor
    from sam2.session import InferenceSession


@dataclass(frozen=True)
class CreatedNode:
    """A memory a tracker created on a frame, with its mask (for plots, demos and tests)."""

    node: int
    parent: Optional[int]  # node it extends (None for a root)
    candidate: int  # decoder candidate index
    iou: float
    obj_logit: float
    pred_masks: Optional[Tensor]  # [1, 1, 4h, 4w] low-res logits; None if pruned at once


@dataclass(frozen=True)
class TrackStep:
    """What a tracker did for one object on one frame.

    ``kind`` is ``"prompt"`` (a conditioning frame), ``"root"`` (an unbranched frame starting a tree),
    ``"greedy"`` (SAM 2's best-IoU choice), ``"branch"`` (a tree selection; ``certain`` tells which rule
    was used), ``"absent"`` (not joined yet, with ``objects_join_at_first_prompt``) or ``"end"`` (after the
    last frame). A tracker's state is a set of *pathways* (SAM 2: one): ``scores``, ``ious`` and
    ``obj_logits`` are per pathway after the frame (IoU / object logit of the candidate each pathway holds),
    ``best_pathway`` the one the answer follows. ``committed_frames`` became final on this frame.
    """

    obj_id: Any
    frame_idx: Optional[int]  # None for "end"
    kind: str
    certain: Optional[bool]
    pathway_nodes: tuple[int, ...]
    scores: tuple[float, ...]
    ious: tuple[float, ...]
    obj_logits: tuple[float, ...]
    best_pathway: Optional[int]
    created: tuple[CreatedNode, ...]
    committed_frames: tuple[int, ...]
    forced_frame: Optional[int]
    stored_nodes: int
    #: method-specific details, JSON-ready, per pathway: SAMURAI's ``"motion"`` (the predicted box, the
    #: chosen candidate's motion IoU, the filter's stable frames and corrected mean), DAM4SAM's
    #: ``"distractor"`` (whether the frame joined the DRM, the size ratio, the alternatives' box IoUs,
    #: the DRM frames)
    extras: Optional[dict[str, Any]] = None


StepObserver = Callable[[TrackStep], None]


@dataclass(frozen=True)
class Pick:
    """A candidate to remember: candidate ``candidate`` of the object's row ``row``."""

    row: int
    candidate: int


@dataclass(frozen=True)
class FinalOutput:
    """An object's output at processing step ``step`` is final: these memories and mask logits."""

    step: int
    memory: NewMemories


@dataclass
class Outcome:
    """What a tracker call settled: outputs that became final (in step order) and the observer's record."""

    final: list[FinalOutput] = field(default_factory=list)
    record: Optional[TrackStep] = None


@dataclass(frozen=True)
class PropagationRun:
    """What trackers see of one propagation: the model's engine calls, the session, the frames."""

    model: SAM2VideoPredictor
    session: InferenceSession
    timeline: Timeline
    observing: bool  # whether records are wanted (building them costs a little)

    def obj_id(self, obj_idx: int) -> Any:
        return self.session.objects[obj_idx].obj_id


class ObjectTracker(ABC):
    """One object's tracking state during one propagation (see the module docstring)."""

    @abstractmethod
    def prompted(self, step: int) -> Outcome:
        """The object has a conditioning frame (a prompt) at ``step``; its mask there is the prompt's."""

    @abstractmethod
    def absent(self, step: int) -> Optional[TrackStep]:
        """The object has not joined yet at ``step`` (it is reported absent)."""

    @abstractmethod
    def memories(self, step: int) -> list[ItemMemory]:
        """The memory of each of the object's rows on a tracked frame (at least one row)."""

    @abstractmethod
    def choose(self, step: int, ious: Tensor, obj_logits: Tensor, **details: Tensor) -> list[Pick]:
        """Candidates to remember, given the rows' predicted IoUs ``[rows, K]`` and object-score logits
        ``[rows]`` (float32, on the host), and the :attr:`Tracker.candidate_details` the tracker asked
        for: ``boxes`` ``[rows, K, 4]`` (host, :meth:`sam2.engine.Candidates.boxes`), ``visible``
        ``[rows, K]`` (host bool: any low-res pixel > 0), ``masks`` ``[rows, K, 4h, 4w]`` (low-res logits,
        on the device)."""

    @abstractmethod
    def remember(self, step: int, memories: list[NewMemories]) -> Outcome:
        """The encoded memories of the picks of :meth:`choose` (same order)."""

    @abstractmethod
    def finish(self) -> Outcome:
        """The propagation ended: every output not final yet becomes final."""


class Tracker(ABC):
    """A tracking method's settings; makes the per-object state of each propagation."""

    #: appended to the progress bar's description
    label: str = ""
    #: one model pass per frame for all objects' rows; ``False`` runs one pass per object, so an object's
    #: results never depend on which other objects are tracked, bit for bit
    batch_objects: bool = True
    #: sessions keep the final outputs of tracked frames (read as memory by later prompts and runs)
    store_outputs: bool = True
    #: what :meth:`ObjectTracker.choose` receives besides IoUs and object logits: any of ``"boxes"``
    #: (SAMURAI's motion score), ``"visible"``, ``"masks"`` (DAM4SAM's distractor rule)
    candidate_details: frozenset[str] = frozenset()
    #: a box prompt alone becomes the mask SAM answers it with (:meth:`SAM2VideoPredictor.box_mask`),
    #: given as a mask prompt: DAM4SAM's initialisation
    box_prompts_as_masks: bool = False

    def model_overrides(self) -> list[str]:
        """Hydra overrides of the model config the method needs (the builders apply them)."""
        return []

    def check_model(self, model: SAM2VideoPredictor) -> None:
        """Refuse model settings the method cannot honour (called when the predictor is built)."""
        return None

    @abstractmethod
    def track_object(self, run: PropagationRun, obj_idx: int) -> ObjectTracker:
        """The state of object ``obj_idx`` for one propagation."""


class SAM2Tracker(Tracker):
    """SAM 2: each object's memory is the session's (conditioning frames + the latest tracked frames, the
    rule of :func:`sam2.modeling.memory.recent_memory_slots`); the highest-IoU candidate is kept and final
    at once. Objects run one model pass each, as upstream (so results equal upstream's bit for bit)."""

    batch_objects = False

    def track_object(self, run: PropagationRun, obj_idx: int) -> ObjectTracker:
        return _GreedyObject(run, obj_idx)


class _GreedyObject(ObjectTracker):
    def __init__(self, run: PropagationRun, obj_idx: int) -> None:
        self.run = run
        self.obj_idx = obj_idx
        self.choice: Optional[tuple[int, float, float]] = None  # candidate, IoU, object logit

    def prompted(self, step: int) -> Outcome:
        return Outcome(record=self._record(step, "prompt") if self.run.observing else None)

    def absent(self, step: int) -> Optional[TrackStep]:
        return self._record(step, "absent") if self.run.observing else None

    def memories(self, step: int) -> list[ItemMemory]:
        run = self.run
        frame_idx = run.timeline.frame(step)
        return [run.model.object_memory(run.session, self.obj_idx, frame_idx, run.timeline.reverse)]

    def choose(self, step: int, ious: Tensor, obj_logits: Tensor, **details: Tensor) -> list[Pick]:
        best = int(torch.argmax(ious[0]))
        self.choice = (best, float(ious[0, best]), float(obj_logits[0]))
        return [Pick(0, best)]

    def remember(self, step: int, memories: list[NewMemories]) -> Outcome:
        record = None
        if self.run.observing:
            candidate, iou, obj_logit = self.choice
            created = CreatedNode(step, None, candidate, iou, obj_logit, memories[0].pred_masks)
            record = self._record(step, "greedy", created)
        return Outcome([FinalOutput(step, memories[0])], record)

    def finish(self) -> Outcome:
        return Outcome()

    def _record(self, step: int, kind: str, created: Optional[CreatedNode] = None) -> TrackStep:
        frame_idx = self.run.timeline.frame(step)
        chosen = () if created is None else (created,)
        return TrackStep(
            obj_id=self.run.obj_id(self.obj_idx),
            frame_idx=frame_idx,
            kind=kind,
            certain=None,
            pathway_nodes=tuple(c.node for c in chosen),
            scores=(),
            ious=tuple(c.iou for c in chosen),
            obj_logits=tuple(c.obj_logit for c in chosen),
            best_pathway=0 if chosen else None,
            created=chosen,
            committed_frames=(frame_idx,) if kind in ("greedy", "prompt") else (),
            forced_frame=None,
            stored_nodes=0,
        )
