"""The upstream-compatible import path: ``from sam2.utils.misc import ...`` works as with ``sam2==1.1.0``.

Nothing is defined here; the names are re-exported from the modules that hold them, and code inside
this library imports from those directly:

- :mod:`sam2.utils.mask_postprocess`: ``get_connected_components``, ``fill_holes_in_mask_scores``,
  ``mask_to_box``;
- :mod:`sam2.prompt_inputs`: ``concat_points``;
- :mod:`sam2.utils.video_frames`: ``load_video_frames`` and the frames it returns,
  ``PrefetchingVideoFrames`` (upstream's ``AsyncVideoFrameLoader``).

Upstream's ``get_sdpa_settings`` is not provided: the attention layers here do not use it.
"""

from sam2.prompt_inputs import concat_points
from sam2.utils.mask_postprocess import fill_holes_in_mask_scores, get_connected_components, mask_to_box
from sam2.utils.video_frames import PrefetchingVideoFrames, load_video_frames

#: upstream's name of the lazy frame loader, which :class:`PrefetchingVideoFrames` replaces
AsyncVideoFrameLoader = PrefetchingVideoFrames

__all__ = [
    "AsyncVideoFrameLoader",
    "PrefetchingVideoFrames",
    "concat_points",
    "fill_holes_in_mask_scores",
    "get_connected_components",
    "load_video_frames",
    "mask_to_box",
]
