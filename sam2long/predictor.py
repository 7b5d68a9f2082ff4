"""SAM2Long video predictor: SAM 2's video predictor with SAM2Long's tracker.

Prompts, sessions, the propagation loop and outputs are those of
:class:`~sam2.sam2_video_predictor.SAM2VideoPredictor`; the tracker (:class:`~sam2long.tracker.SAM2LongTracker`)
decides what each object remembers. This class only names that combination (for type hints and hydra
targets); it overrides nothing.
"""

from __future__ import annotations

from typing import Any, Optional

from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.tracker import CreatedNode, StepObserver, TrackStep
from sam2long.config import SAM2LongConfig
from sam2long.tracker import SAM2LongTracker

#: the observer's record (upstream-neutral name: :class:`sam2.tracker.TrackStep`)
PathwayStep = TrackStep
PathwayObserver = StepObserver

__all__ = ["CreatedNode", "PathwayObserver", "PathwayStep", "SAM2LongVideoPredictor"]


class SAM2LongVideoPredictor(SAM2VideoPredictor):
    """:class:`SAM2VideoPredictor` with ``P`` memory pathways per object.

    Args:
        config: the tree settings (:class:`~sam2long.config.SAM2LongConfig`; default: the ``official``
            preset). ``store_outputs`` and ``batch_objects``: see :class:`~sam2long.tracker.SAM2LongTracker`.
        **kwargs: :class:`SAM2VideoPredictor` / ``SAM2Base`` arguments. Options the tree cannot honour are
            refused, naming the option: ``memory_temporal_stride_for_eval != 1``,
            ``non_overlap_masks_for_mem_enc=True`` and ``num_maskmem < 2``.
    """

    def __init__(
        self,
        config: Optional[SAM2LongConfig] = None,
        store_outputs: bool = True,
        batch_objects: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(tracker=SAM2LongTracker(config, store_outputs, batch_objects), **kwargs)
