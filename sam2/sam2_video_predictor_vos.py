"""SAM 2's video predictor with the heavy modules ``torch.compile``d (upstream's ``vos_optimized``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor

from sam2.sam2_video_predictor import SAM2VideoPredictor


def _clone_tensors(value: Any) -> Any:
    """Copy every tensor in a (nested) tuple/list/dict output, leaving other values as they are."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    return value


def _cloning_outputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a compiled function so its outputs are fresh tensors (compiled graphs may reuse buffers)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _clone_tensors(fn(*args, **kwargs))

    return wrapper


class SAM2VideoPredictorVOS(SAM2VideoPredictor):
    """Video predictor tuned for semi-supervised VOS: the heavy modules are ``torch.compile``d.

    Compilation is on by default only where it pays off and is supported (CUDA available);
    pass ``compile_components`` to force it on or off. Uncompiled, the class computes exactly what
    :class:`SAM2VideoPredictor` computes.
    """

    def __init__(self, *args: Any, compile_components: Optional[bool] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if compile_components is None:
            compile_components = torch.cuda.is_available()
        if compile_components:
            self._compile_all_components()

    def _compile_all_components(self) -> None:
        """Compile memory encoder, memory attention, prompt encoder and mask decoder."""
        # Only the memory attention sees a varying number of memory tokens, hence dynamic shapes;
        # the SAM heads lose accuracy when compiled with dynamic shapes.
        for module, dynamic in (
            (self.memory_encoder, False),
            (self.memory_attention, True),
            (self.sam_prompt_encoder, False),
            (self.sam_mask_decoder, False),
        ):
            compiled = torch.compile(module.forward, mode="max-autotune", fullgraph=True, dynamic=dynamic)
            module.forward = _cloning_outputs(compiled)

    def forward_image(self, img_batch: Tensor) -> dict[str, Any]:
        """:meth:`SAM2Base.forward_image` with feature maps copied out of the (compiled) encoder's buffers."""
        backbone_out = super().forward_image(img_batch)
        backbone_out["backbone_fpn"] = [feat.clone() for feat in backbone_out["backbone_fpn"]]
        backbone_out["vision_pos_enc"] = [pos.clone() for pos in backbone_out["vision_pos_enc"]]
        return backbone_out
