"""Builders for :class:`~sam2long.predictor.SAM2LongVideoPredictor`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from sam2.build_sam import build_sam2_video_predictor
from sam2long.config import SAM2LongConfig

_TARGET = "++model._target_=sam2long.predictor.SAM2LongVideoPredictor"
_DEFAULTS = SAM2LongConfig()


def build_sam2long_video_predictor(
    config_file: str,
    ckpt_path: Optional[Union[str, os.PathLike]] = None,
    device: Optional[Union[str, torch.device]] = None,
    num_pathways: int = _DEFAULTS.num_pathways,
    iou_threshold: float = _DEFAULTS.iou_threshold,
    uncertainty: float = _DEFAULTS.uncertainty,
    memory_modulation: Optional[tuple[float, float]] = _DEFAULTS.memory_modulation,
    memory_selection: bool = _DEFAULTS.memory_selection,
    max_lag: Optional[int] = _DEFAULTS.max_lag,
    hydra_overrides_extra: Sequence[str] = (),
    config: Union[SAM2LongConfig, str, None] = None,
    store_outputs: bool = True,
    **kwargs: Any,
):
    """Build a SAM2Long video predictor from a SAM 2 config name and an official checkpoint.

    Args:
        config_file: SAM 2 / 2.1 hydra config name, e.g. ``configs/sam2.1/sam2.1_hiera_l.yaml``.
        ckpt_path: official checkpoint (``{"model": state_dict}``); None keeps random weights.
        device: ``"cuda"``, ``"cpu"``, ...; None picks CUDA when available.
        num_pathways: P, memory pathways kept per object (1 = greedy like SAM 2).
        iou_threshold: δ_iou, a frame enters a pathway's memory only if its predicted IoU is above it
            (and the object is predicted present).
        uncertainty: δ_conf, a frame is "uncertain" when every pathway's |object-score logit| is at most
            this; then only candidates with distinct rounded IoU are kept (diversity).
        memory_modulation: ``(w_low, w_high)`` key weights by occlusion rank, or None for off.
        memory_selection: False uses SAM 2's most-recent-frames memory in every pathway.
        max_lag: force a decision after this many undecided frames (bounded latency; approximate).
        hydra_overrides_extra: extra hydra overrides (e.g. ``["++model.image_size=512"]``).
        config: a :class:`SAM2LongConfig` or a preset name (``"official"``, ``"paper"``) instead of
            the individual tree arguments above (which must then stay at their defaults).
        store_outputs: keep best-path outputs in the session (see :class:`SAM2LongVideoPredictor`).
        **kwargs: forwarded to :func:`sam2.build_sam.build_sam2_video_predictor`
            (``mode``, ``apply_postprocessing``, ...).
    """
    given = dict(
        num_pathways=num_pathways,
        iou_threshold=iou_threshold,
        uncertainty=uncertainty,
        memory_modulation=memory_modulation,
        memory_selection=memory_selection,
        max_lag=max_lag,
    )
    if config is None:
        tree_config = SAM2LongConfig(**given)
    else:
        changed = [k for k, v in given.items() if v != getattr(_DEFAULTS, k)]
        if changed:
            raise ValueError(f"pass either `config` or the individual settings, not both (got {changed})")
        tree_config = SAM2LongConfig.from_preset(config) if isinstance(config, str) else config
    model = build_sam2_video_predictor(
        config_file,
        ckpt_path=ckpt_path,
        device=device,
        hydra_overrides_extra=[_TARGET, *hydra_overrides_extra],
        **kwargs,
    )
    model.sam2long = tree_config
    model.store_outputs = store_outputs
    return model
