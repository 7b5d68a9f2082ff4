"""SAM2Long: a training-free memory tree on top of SAM 2 for long-video object segmentation.

Entry points: :func:`build_sam2long_video_predictor`, :class:`SAM2LongVideoPredictor` and
:class:`SAM2LongConfig` (with the ``official`` and ``paper`` presets). They are imported on first
use, so model-free modules such as :mod:`sam2long.mask_io` (used by the torch-free evaluators)
load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SAM2LongConfig": "sam2long.config",
    "SAM2LongVideoPredictor": "sam2long.predictor",
    "build_sam2long_video_predictor": "sam2long.build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sam2long' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
