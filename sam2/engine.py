"""Typed records of the tracking engine shared by the SAM 2 and SAM2Long video predictors.

A video predictor tracks a frame in four engine calls, all public methods of
:class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` / :class:`~sam2.modeling.sam2_base.SAM2Base`:

1. ``frame_features(state, frame_idx, batch_size)`` -> :class:`FrameFeatures` (image encoder, cached);
2. memories: ``object_memory`` (SAM 2's policy) or ``conditioning_memory`` plus the caller's own
   entries, as :class:`~sam2.modeling.memory.ItemMemory`, batched by ``assemble_memory``;
3. ``decode_candidates(features, memory_batch)`` -> :class:`Candidates` (memory attention + SAM heads);
4. ``encode_memories(state, features, candidates, rows, cands)`` -> :class:`NewMemories` for the
   chosen candidates (object pointer + memory encoder, in the session's storage form).

SAM 2 runs them with one row per object and keeps the best-IoU candidate; SAM2Long runs them once per
frame on all objects x distinct pathways and lets its trees choose. :class:`Timeline` maps processing
steps to frame indices, so that nothing downstream needs signed frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

FrameOutput = dict[str, Any]
"""One object's output on one frame in upstream's layout, as :meth:`SAM2Base.track_step` reads and
writes it: ``maskmem_features``, ``maskmem_pos_enc``, ``pred_masks`` (low-res logits), ``obj_ptr``,
``object_score_logits``."""


@dataclass(frozen=True)
class FrameFeatures:
    """Backbone features of one frame, sequence-first and expanded (without copy) to a batch."""

    frame_idx: int
    vision_feats: list[Tensor]  # per level [h*w, B, C]
    vision_pos_embeds: list[Tensor]  # per level [h*w, B, C]
    feat_sizes: list[tuple[int, int]]

    @property
    def batch_size(self) -> int:
        return self.vision_feats[-1].size(1)


@dataclass(frozen=True)
class Candidates:
    """The SAM heads' candidate masks of every batch row (3 with multimask output, else 1)."""

    low_res_masks: Tensor  # [B, K, 4h, 4w] logits
    high_res_masks: Tensor  # [B, K, S, S] logits
    ious: Tensor  # [B, K] predicted IoU
    tokens: Tensor  # [B, K or 1, C] decoder output tokens (object pointers are made from them)
    object_score_logits: Tensor  # [B, 1]

    def best(self) -> Tensor:
        """``[B]`` index of each row's highest-IoU candidate (SAM 2's choice)."""
        return torch.argmax(self.ious, dim=-1)

    def boxes(self) -> Tensor:
        """``[B, K, 4]`` tight box ``(x0, y0, x1, y1)`` (inclusive pixel indices, model-input
        resolution) of each candidate's ``high_res_masks > 0``; all zeros for an empty mask, as
        SAMURAI measures candidates. Computed on the masks' device in one pass."""
        fg = self.high_res_masks > 0
        cols, rows = fg.any(dim=-2), fg.any(dim=-1)  # [B, K, S] per x, per y

        def span(line: Tensor) -> tuple[Tensor, Tensor]:
            first = torch.argmax(line.to(torch.uint8), dim=-1)
            last = line.size(-1) - 1 - torch.argmax(line.flip(-1).to(torch.uint8), dim=-1)
            return first, last

        (x0, x1), (y0, y1) = span(cols), span(rows)
        boxes = torch.stack([x0, y0, x1, y1], dim=-1)
        return torch.where(cols.any(dim=-1, keepdim=True), boxes, torch.zeros_like(boxes))


@dataclass(frozen=True)
class NewMemories:
    """Memories of chosen candidates, one row each, ready to be stored and attended to later."""

    maskmem_features: Tensor  # [N, C_mem, h, w] in the session's storage dtype and device
    obj_ptr: Tensor  # [N, C]
    pred_masks: Tensor  # [N, 1, 4h, 4w] low-res logits of the chosen candidates (not post-processed)
    object_score_logits: Tensor  # [N, 1]

    def __len__(self) -> int:
        return self.obj_ptr.size(0)

    def row(self, i: int) -> NewMemories:
        """Row ``i`` as a one-row record that owns its memory (copies: a view would keep the whole
        batch alive for as long as the row is kept, several times the row's own size)."""
        if len(self) == 1:
            return self
        return NewMemories(
            self.maskmem_features[i : i + 1].clone(),
            self.obj_ptr[i : i + 1].clone(),
            self.pred_masks[i : i + 1].clone(),
            self.object_score_logits[i : i + 1].clone(),
        )


@dataclass(frozen=True)
class Timeline:
    """The frames of one propagation in processing order: step ``s`` processes ``frames[s]``.

    ``frames`` is a ``range`` (lazy: a live stream's timeline can be as long as its capacity)."""

    frames: range
    reverse: bool

    @classmethod
    def span(cls, start: int, count: int, reverse: bool, num_frames: int) -> Timeline:
        """``count + 1`` frames from ``start`` (clipped to the video), backwards when ``reverse``."""
        if not 0 <= start < num_frames:
            raise ValueError(f"start frame {start} is outside the video's frames [0, {num_frames - 1}]")
        if reverse:
            end = max(start - count, 0)
            # starting at frame 0 there is nothing to track backwards
            frames = range(start, end - 1, -1) if start > 0 else range(0)
        else:
            frames = range(start, min(start + count, num_frames - 1) + 1)
        return cls(frames, reverse)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[int]:
        return iter(self.frames)

    def frame(self, step: int) -> int:
        """Frame index processed at ``step``."""
        return self.frames[step]

    def step_of(self, frame_idx: int) -> Optional[int]:
        """Step at which ``frame_idx`` is processed, or None if it is not on this timeline."""
        return self.frames.index(frame_idx) if frame_idx in self.frames else None

    def steps(self) -> Iterator[tuple[int, int]]:
        """``(step, frame_idx)`` pairs in processing order."""
        return enumerate(self.frames)


@dataclass
class PropagationCursor:
    """Where the propagation in progress on a session is: step ``next_step`` has not taken its prompts
    yet. Prompts added while it runs (between yields, or from its ``before_frame`` hook) are used when
    their frame is reached; frames it has already passed are refused."""

    timeline: Timeline
    next_step: int = 0

    def passed(self, frame_idx: int) -> bool:
        step = self.timeline.step_of(frame_idx)
        return step is not None and step < self.next_step

    @property
    def next_frame(self) -> Optional[int]:
        return self.timeline.frame(self.next_step) if self.next_step < len(self.timeline) else None
