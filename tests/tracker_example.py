"""A complete small tracker: SAM 2's greedy choice, remembering only frames where the object was present.

This file is the example of "Writing a tracker" in docs/architecture.md (a test keeps the two equal) and
runs in tests/test_tracker_interface.py.
"""

from __future__ import annotations

from sam2.engine import NewMemories
from sam2.modeling.memory import ItemMemory, PointerMemory, SpatialMemory, tpos_enc_row
from sam2.tracker import FinalOutput, ObjectTracker, Outcome, Pick, PropagationRun, Tracker, TrackStep


class PresentFramesTracker(Tracker):
    """Keep SAM 2's best-IoU candidate; remember a frame only if the object was predicted present."""

    label = " (present frames)"

    def track_object(self, run: PropagationRun, obj_idx: int) -> ObjectTracker:
        return PresentFrames(run, obj_idx)


class PresentFrames(ObjectTracker):
    def __init__(self, run: PropagationRun, obj_idx: int) -> None:
        self.run, self.obj_idx = run, obj_idx
        self.kept: list[tuple[int, NewMemories]] = []  # (step, memory) of present frames, oldest first
        self.present = False

    def prompted(self, step: int) -> Outcome:
        self.kept.clear()  # a prompt supersedes what was remembered before it
        return Outcome()

    def absent(self, step: int) -> TrackStep | None:
        return None

    def memories(self, step: int) -> list[ItemMemory]:
        run, model = self.run, self.run.model
        frame_idx = run.timeline.frame(step)
        memory = model.conditioning_memory(run.session, self.obj_idx, frame_idx, run.timeline.reverse)
        pos_enc = model.memory_pos_enc(run.session)
        recent = self.kept[-(model.num_maskmem - 1) :]
        for t_pos, (_, kept) in enumerate(recent, start=model.num_maskmem - len(recent)):
            row = tpos_enc_row(model.num_maskmem, t_pos)
            memory.spatial.append(SpatialMemory(kept.maskmem_features, pos_enc, row))
        budget = min(run.session.num_frames, model.max_obj_ptrs_in_encoder)
        for kept_step, kept in reversed(self.kept):
            if step - kept_step < budget:
                memory.pointers.append(PointerMemory(kept.obj_ptr, step - kept_step))
        return [memory]

    def choose(self, step, ious, obj_logits) -> list[Pick]:
        self.present = bool(obj_logits[0] > 0)
        return [Pick(row=0, candidate=int(ious[0].argmax()))]

    def remember(self, step: int, memories: list[NewMemories]) -> Outcome:
        if self.present:
            self.kept.append((step, memories[0]))
            del self.kept[: -self.run.model.max_obj_ptrs_in_encoder]
        return Outcome(final=[FinalOutput(step, memories[0])])

    def finish(self) -> Outcome:
        return Outcome()
