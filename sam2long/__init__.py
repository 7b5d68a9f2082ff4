"""SAM2Long: a training-free memory tree on top of SAM 2 for long-video object segmentation.

Entry points: :func:`build_sam2long_video_predictor`, :class:`SAM2LongVideoPredictor` and
:class:`SAM2LongConfig` (with the ``official`` and ``paper`` presets).
"""

from sam2long.build import build_sam2long_video_predictor
from sam2long.config import SAM2LongConfig
from sam2long.predictor import SAM2LongVideoPredictor

__all__ = ["SAM2LongConfig", "SAM2LongVideoPredictor", "build_sam2long_video_predictor"]
