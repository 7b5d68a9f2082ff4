"""SAMURAI's motion model (Yang et al., 2024): a Kalman filter over the chosen mask's box, and the
motion-aware score of the decoder's candidates (model-free, plain numbers).

Per pathway and tracked frame (:func:`motion_scores`, then :func:`MotionState.after`):

- the first frame, or the frame after the filter lost the object: the candidate with the highest
  predicted IoU is chosen and the filter starts at its box;
- while fewer than ``warmup`` frames in a row were reliable: predict, choose by predicted IoU, and correct
  with the chosen box if its IoU is above ``min_iou`` (else start over on the next frame);
- afterwards: predict; each candidate scores ``weight * motion IoU + (1 - weight) * predicted IoU``, the
  motion IoU being the overlap of its box with the predicted one; the choice corrects the filter unless
  its IoU is below ``min_iou`` (then the filter starts over).

Boxes are ``(x0, y0, x1, y1)`` inclusive pixel indices at the model's input resolution, all zeros for an
empty mask (:meth:`sam2.engine.Candidates.boxes`). The state is immutable, so the pathways of a tree
share their parents' states and each branch gets its own successor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

Box = tuple[float, float, float, float]

# Constant-velocity model over (x, y, a, h) and their velocities (8-d state, unit time step).
_DIM = 4
_MOTION = np.eye(2 * _DIM)
_MOTION[:_DIM, _DIM:] = np.eye(_DIM)
_OBSERVE = np.eye(_DIM, 2 * _DIM)
# Noise as fractions of the box height (SAMURAI's, from ByteTrack / DeepSORT); aspect ratio fixed.
_POSITION_STD = 1.0 / 20
_VELOCITY_STD = 1.0 / 160


def box_to_xyah(box: Sequence[float]) -> np.ndarray:
    """``(x0, y0, x1, y1)`` → centre, aspect ratio, height; an empty (zero-height) box counts height 1."""
    x0, y0, x1, y1 = (float(v) for v in box)
    height = y1 - y0
    if height == 0:
        height = 1.0
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / height, height])


def xyah_to_box(xyah: Sequence[float]) -> Box:
    x, y, aspect, height = (float(v) for v in xyah[:4])
    half_w, half_h = aspect * height / 2, height / 2
    return (x - half_w, y - half_h, x + half_w, y + half_h)


def box_iou(predicted: Box, box: Sequence[float]) -> float:
    """Overlap of a predicted box with a candidate's, SAMURAI's way: areas ``(x1 - x0) * (y1 - y0)``
    (no +1 on pixel indices) and 0 for an empty candidate."""
    bx0, by0, bx1, by1 = (float(v) for v in box)
    if (bx0, by0, bx1, by1) == (0.0, 0.0, 0.0, 0.0):
        return 0.0
    px0, py0, px1, py1 = predicted
    inter = max(0.0, min(px1, bx1) - max(px0, bx0)) * max(0.0, min(py1, by1) - max(py0, by0))
    union = (px1 - px0) * (py1 - py0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union != 0 else 0.0


@dataclass(frozen=True)
class MotionConfig:
    """SAMURAI's motion settings (official values: ``weight`` 0.25 in its released configs, ``warmup``
    15 frames, ``min_iou`` 0.3)."""

    weight: float = 0.25
    warmup: int = 15
    min_iou: float = 0.3


@dataclass(frozen=True)
class KalmanState:
    mean: np.ndarray  # [8]
    covariance: np.ndarray  # [8, 8]

    @classmethod
    def start(cls, box: Sequence[float]) -> KalmanState:
        xyah = box_to_xyah(box)
        h = xyah[3]
        std = [2 * _POSITION_STD * h, 2 * _POSITION_STD * h, 1e-2, 2 * _POSITION_STD * h]
        std += [10 * _VELOCITY_STD * h, 10 * _VELOCITY_STD * h, 1e-5, 10 * _VELOCITY_STD * h]
        return cls(np.r_[xyah, np.zeros(_DIM)], np.diag(np.square(std)))

    def predict(self) -> KalmanState:
        h = self.mean[3]
        std = [_POSITION_STD * h, _POSITION_STD * h, 1e-2, _POSITION_STD * h]
        std += [_VELOCITY_STD * h, _VELOCITY_STD * h, 1e-5, _VELOCITY_STD * h]
        mean = self.mean @ _MOTION.T
        covariance = np.linalg.multi_dot((_MOTION, self.covariance, _MOTION.T)) + np.diag(np.square(std))
        return KalmanState(mean, covariance)

    def correct(self, box: Sequence[float]) -> KalmanState:
        h = self.mean[3]
        innovation_cov = np.diag(np.square([_POSITION_STD * h, _POSITION_STD * h, 1e-1, _POSITION_STD * h]))
        projected_mean = _OBSERVE @ self.mean
        projected_cov = np.linalg.multi_dot((_OBSERVE, self.covariance, _OBSERVE.T)) + innovation_cov
        # gain = P H^T S^-1, through a Cholesky solve of the symmetric S
        factor = np.linalg.cholesky(projected_cov)
        cross = self.covariance @ _OBSERVE.T
        gain = np.linalg.solve(factor.T, np.linalg.solve(factor, cross.T)).T
        mean = self.mean + (box_to_xyah(box) - projected_mean) @ gain.T
        covariance = self.covariance - np.linalg.multi_dot((gain, projected_cov, gain.T))
        return KalmanState(mean, covariance)

    @property
    def box(self) -> Box:
        return xyah_to_box(self.mean[:_DIM])


@dataclass(frozen=True)
class MotionState:
    """One pathway's filter (``None`` before its first frame) and how many frames in a row it trusted."""

    kalman: Optional[KalmanState] = None
    stable_frames: int = 0

    def predicted(self, config: MotionConfig) -> Optional[KalmanState]:
        """The filter's prediction for the next frame (None while it has to start over)."""
        if self.kalman is None or self.stable_frames == 0:
            return None
        return self.kalman.predict()

    def scores_motion(self, config: MotionConfig) -> bool:
        """Whether this frame's choice is motion-weighted (the warm-up is over)."""
        return self.kalman is not None and self.stable_frames >= config.warmup

    def after(
        self, config: MotionConfig, predicted: Optional[KalmanState], box: Sequence[float], iou: float
    ) -> MotionState:
        """The state once ``box`` (predicted IoU ``iou``) was chosen, from :meth:`predicted`."""
        if predicted is None:
            return MotionState(KalmanState.start(box), 1)
        if self.stable_frames < config.warmup:
            if iou > config.min_iou:
                return MotionState(predicted.correct(box), self.stable_frames + 1)
            return MotionState(predicted, 0)
        if iou < config.min_iou:
            return MotionState(predicted, 0)
        return MotionState(predicted.correct(box), self.stable_frames)


@dataclass(frozen=True)
class MotionScores:
    """A pathway's candidate scores on one frame: what the choice ranks by, and the motion IoUs
    (``None`` during the warm-up, where the score is the predicted IoU)."""

    scores: Tensor  # [K] float32
    motion_ious: Optional[Tensor]  # [K] float32
    predicted: Optional[KalmanState]


def motion_scores(state: MotionState, config: MotionConfig, ious: Tensor, boxes: Tensor) -> MotionScores:
    """Score one pathway's ``K`` candidates (predicted IoUs ``[K]``, boxes ``[K, 4]``), in float32 as
    SAMURAI (``weight * motion + (1 - weight) * iou``)."""
    predicted = state.predicted(config)
    if predicted is None or not state.scores_motion(config):
        return MotionScores(ious, None, predicted)
    reference = predicted.box
    motion = torch.tensor([box_iou(reference, b) for b in boxes.tolist()], dtype=torch.float32)
    return MotionScores(config.weight * motion + (1 - config.weight) * ious, motion, predicted)
