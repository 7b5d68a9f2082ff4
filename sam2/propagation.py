"""The one propagation loop: any :class:`~sam2.tracker.Tracker` over a session's timeline.

Per frame (processing step): the frame exists (a live stream may end), ``before_frame`` runs, prompts
added meanwhile become conditioning frames (:meth:`SAM2VideoPredictor.take_prompts_on`) and objects
created meanwhile join; then every object is either prompted on the frame (its mask is the prompt's),
absent (not joined yet), or tracked: its tracker's rows go through one model pass (per frame for all
objects, or per object when the tracker says so), the tracker picks candidates, their memories are
encoded in one batch, and the outputs the tracker declares final are stored in the session. A frame is
yielded once every object's output on it is final.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from sam2.engine import Candidates, PropagationCursor, Timeline
from sam2.tracker import ObjectTracker, Outcome, PropagationRun, StepObserver, Tracker, TrackStep
from sam2.utils.heap import HEAP_RELEASE_EVERY, release_free_heap

if TYPE_CHECKING:
    from sam2.sam2_video_predictor import SAM2VideoPredictor
    from sam2.session import InferenceSession

FrameResult = tuple[int, list[Any], Tensor]  # (frame_idx, obj_ids, video_res_masks)


@dataclass
class _Object:
    """The loop's view of one object: its tracker state and outputs not yielded yet."""

    obj_idx: int
    tracker: ObjectTracker
    waiting: bool  # not joined yet: absent, no compute
    outputs: dict[int, Tensor] = field(default_factory=dict)  # final, not yielded yet: step -> low-res logits


def propagate(
    model: SAM2VideoPredictor,
    session: InferenceSession,
    timeline: Timeline,
    tracker: Tracker,
    *,
    objects_join_at_first_prompt: bool = False,
    observer: Optional[StepObserver] = None,
    before_frame: Optional[Callable[[int], None]] = None,
) -> Iterator[FrameResult]:
    """Track every object of ``session`` along ``timeline`` with ``tracker``, yielding
    ``(frame_idx, obj_ids, video_res_masks)`` in processing order (see the module docstring)."""
    loop = _Loop(model, session, timeline, tracker, observer)
    for obj_idx in range(session.num_objects):
        loop.add(obj_idx, waiting=objects_join_at_first_prompt)
    steps = propagation_steps(model, session, timeline, before_frame, f"propagate in video{tracker.label}")
    with contextlib.closing(steps):
        for step, _ in steps:
            for obj_idx in range(len(loop.objects), session.num_objects):
                loop.add(obj_idx, waiting=True)  # created meanwhile: joins on its first prompted frame
            loop.pending.append(step)
            loop.advance(step)
            yield from loop.emit_ready()
    loop.finish()
    yield from loop.emit_ready()


def propagation_steps(
    model: SAM2VideoPredictor,
    session: InferenceSession,
    timeline: Timeline,
    before_frame: Optional[Callable[[int], None]],
    desc: str,
) -> Iterator[tuple[int, int]]:
    """The ``(step, frame_idx)`` of a propagation, each once its prompts are taken. Records the running
    propagation in the session (:class:`PropagationCursor`: prompts on passed frames are refused), draws
    the progress bar, and after the caller's work on each frame drops what a live stream no longer needs
    and now and then returns freed heap pages to the OS."""
    cursor = PropagationCursor(timeline)
    session.propagation = cursor
    live = session.is_live()
    try:
        desc = f"{desc} [{model.precision.short}]"
        with tqdm(total=None if live else len(timeline), desc=desc, unit="frame") as bar:
            for step, frame_idx in timeline.steps():
                if not session.frame_available(frame_idx):
                    return
                if before_frame is not None:
                    before_frame(frame_idx)
                model.take_prompts_on(session, frame_idx)
                cursor.next_step = step + 1
                yield step, frame_idx
                if live:
                    forget_passed_outputs(model, session, frame_idx)
                if step % HEAP_RELEASE_EVERY == HEAP_RELEASE_EVERY - 1:
                    release_free_heap()
                bar.update()
    finally:
        if session.propagation is cursor:
            session.propagation = None


def forget_passed_outputs(model: SAM2VideoPredictor, session: InferenceSession, frame_idx: int) -> None:
    """On a live stream: drop tracked outputs older than any memory attention can still read
    (``max(num_maskmem, max_obj_ptrs_in_encoder)`` frames back). Their frames are gone, so no prompt can
    come back to them, and keeping them would grow the session with the stream."""
    oldest = frame_idx - max(model.num_maskmem, model.max_obj_ptrs_in_encoder)
    for obj in session.objects:
        for f in [f for f in obj.tracked_outputs if f < oldest]:
            del obj.tracked_outputs[f]
        for f in [f for f in obj.frames_tracked if f < oldest and f not in obj.cond_outputs]:
            del obj.frames_tracked[f]


def _host_copy(candidates: Candidates, wanted: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """One small host copy per pass for every tracker's decisions, in float32 whatever the network
    computed in: every row's candidate IoUs and object-score logit ``[B, K + 1]``, and the candidate
    details the tracker asked for (:attr:`Tracker.candidate_details`; masks stay on the device)."""
    num_cands = candidates.ious.size(1)
    parts = {"scores": torch.cat([candidates.ious.float(), candidates.object_score_logits.float()], dim=1)}
    if "boxes" in wanted:
        parts["boxes"] = candidates.boxes().flatten(1).float()  # pixel indices: exact in float32
    if "visible" in wanted:
        parts["visible"] = candidates.low_res_masks.gt(0).flatten(2).any(dim=-1).float()
    host = torch.cat(list(parts.values()), dim=1).cpu()
    copied = dict(zip(parts, host.split([part.size(1) for part in parts.values()], dim=1)))
    details = {}
    if "boxes" in wanted:
        details["boxes"] = copied["boxes"].reshape(-1, num_cands, 4)
    if "visible" in wanted:
        details["visible"] = copied["visible"] > 0
    if "masks" in wanted:
        details["masks"] = candidates.low_res_masks
    return copied["scores"], details


class _Loop:
    """One propagation's per-frame work over all objects."""

    def __init__(
        self,
        model: SAM2VideoPredictor,
        session: InferenceSession,
        timeline: Timeline,
        tracker: Tracker,
        observer: Optional[StepObserver],
    ) -> None:
        self.model = model
        self.session = session
        self.timeline = timeline
        self.tracker = tracker
        self.observer = observer
        self.run = PropagationRun(model, session, timeline, observing=observer is not None)
        self.objects: list[_Object] = []
        self.pending: deque[int] = deque()  # processed steps not yielded yet

    def add(self, obj_idx: int, waiting: bool) -> None:
        """Start tracking object ``obj_idx`` (absent on the frames processed but not yielded yet)."""
        obj = _Object(obj_idx, self.tracker.track_object(self.run, obj_idx), waiting)
        for step in self.pending:
            obj.outputs[step] = self._absent_masks()
        self.objects.append(obj)

    def advance(self, step: int) -> None:
        """Process one frame for every object."""
        frame_idx = self.timeline.frame(step)
        tracked = []
        for obj in self.objects:
            state = self.session.objects[obj.obj_idx]
            cond_out = state.cond_outputs.get(frame_idx)
            if cond_out is not None:
                obj.waiting = False
                outcome = obj.tracker.prompted(step)
                self._settle(obj, outcome)
                obj.outputs[step] = cond_out["pred_masks"]
                state.frames_tracked[frame_idx] = self.timeline.reverse
                if self.model.clear_non_cond_mem_around_input:
                    # memories just before a prompt may show the object before its correction
                    self.model.drop_memories_near(self.session, obj.obj_idx, frame_idx)
                self._observe(outcome.record)
            elif obj.waiting:
                obj.outputs[step] = self._absent_masks()
                self._observe(obj.tracker.absent(step))
            else:
                tracked.append(obj)
        groups = [tracked] if self.tracker.batch_objects else [[obj] for obj in tracked]
        for group in groups:
            if group:
                self._track(step, group)

    def _track(self, step: int, objects: list[_Object]) -> None:
        """One model pass over the rows of ``objects`` on a tracked frame."""
        model, session = self.model, self.session
        items, spans = [], []
        for obj in objects:
            rows = obj.tracker.memories(step)
            spans.append((len(items), len(rows)))
            items.extend(rows)
        features = model.frame_features(session, self.timeline.frame(step), len(items))
        memory = model.assemble_memory(
            items, session.num_frames, session.device, features.vision_feats[-1].dtype
        )
        candidates = model.decode_candidates(features, memory)
        host, host_details = _host_copy(candidates, self.tracker.candidate_details)
        num_cands = candidates.ious.size(1)
        rows, cands, counts = [], [], []
        for obj, (first, n) in zip(objects, spans):
            span = slice(first, first + n)
            details = {name: value[span] for name, value in host_details.items()}  # only what was asked for
            picks = obj.tracker.choose(step, host[span, :num_cands], host[span, num_cands], **details)
            rows += [first + p.row for p in picks]
            cands += [p.candidate for p in picks]
            counts.append(len(picks))
        memories = None
        if rows:
            device = candidates.ious.device
            memories = model.encode_memories(
                session,
                features,
                candidates,
                torch.tensor(rows, device=device),
                torch.tensor(cands, device=device),
            )
        first = 0
        for obj, count in zip(objects, counts):
            mine = [memories.row(i) for i in range(first, first + count)] if count else []
            first += count
            outcome = obj.tracker.remember(step, mine)
            self._observe(outcome.record)
            self._settle(obj, outcome)

    def _settle(self, obj: _Object, outcome: Outcome) -> None:
        """Final outputs become the object's outputs and, as memory, enter the session."""
        state = self.session.objects[obj.obj_idx]
        for final in outcome.final:
            pred_masks = self.model.postprocess_masks(final.memory.pred_masks)
            obj.outputs[final.step] = pred_masks
            frame_idx = self.timeline.frame(final.step)
            state.frames_tracked[frame_idx] = self.timeline.reverse
            self.model.store_tracked_output(self.session, obj.obj_idx, frame_idx, final.memory, pred_masks)

    def _observe(self, record: Optional[TrackStep]) -> None:
        if self.observer is not None and record is not None:
            self.observer(record)

    def _absent_masks(self) -> Tensor:
        return self.model.absent_masks(self.session, 1)

    def emit_ready(self) -> Iterator[FrameResult]:
        """Yield the oldest pending frames whose output is final for every object."""
        pending = self.pending
        while pending and all(pending[0] in obj.outputs for obj in self.objects):
            step = pending.popleft()
            device = self.session.device
            low_res = torch.cat([obj.outputs.pop(step).to(device) for obj in self.objects], dim=0)
            obj_ids = self.session.obj_ids[: len(self.objects)]  # objects created meanwhile join later
            yield self.timeline.frame(step), obj_ids, self.model.video_res_masks(self.session, low_res)

    def finish(self) -> None:
        """End of the propagation: every tracker makes its remaining outputs final."""
        for obj in self.objects:
            outcome = obj.tracker.finish()
            self._observe(outcome.record)
            self._settle(obj, outcome)
