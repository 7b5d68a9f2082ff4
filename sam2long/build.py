"""Builders for :class:`~sam2long.predictor.SAM2LongVideoPredictor`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch

from sam2.build_sam import build_video_predictor_class
from sam2long.config import SAM2LongConfig
from sam2long.tracker import SAM2LongTracker

_TARGET = "sam2long.predictor.SAM2LongVideoPredictor"


def build_sam2long_video_predictor(
    config_file: str,
    ckpt_path: Optional[Union[str, os.PathLike]] = None,
    device: Optional[Union[str, torch.device]] = None,
    *,
    config: Union[SAM2LongConfig, str, Mapping[str, Any], None] = None,
    store_outputs: bool = True,
    batch_objects: bool = True,
    mode: str = "eval",
    hydra_overrides_extra: Sequence[str] = (),
    apply_postprocessing: bool = True,
    vos_optimized: bool = False,
    dtype: str = "float32",
    **overrides: Any,
):
    """Build a SAM2Long video predictor from a SAM 2 config name and an official checkpoint.

    The tree settings are ``SAM2LongConfig.resolve(config, **overrides)`` and reach the predictor's
    constructor together with ``store_outputs`` (nothing is set on the model after it is built).

    Args:
        config_file: SAM 2 / 2.1 hydra config name, e.g. ``configs/sam2.1/sam2.1_hiera_l.yaml``.
        ckpt_path: official checkpoint (``{"model": state_dict}``); None keeps random weights.
        device: ``"cuda"``, ``"cpu"``, ...; None uses :func:`sam2.build_sam.default_device`.
        config: base tree settings: None (the ``official`` defaults), a preset name (``"official"``,
            ``"paper"``), a :class:`SAM2LongConfig` or a mapping of settings.
        store_outputs: keep best-path outputs in the session (see :class:`SAM2LongVideoPredictor`).
        batch_objects: one model pass for all objects per frame (``False``: one per object, so each
            object's results are independent of the others bit for bit).
        mode: ``"eval"`` puts the model in eval mode.
        hydra_overrides_extra: extra hydra overrides (e.g. ``["++model.image_size=512"]``).
        apply_postprocessing: SAM 2's inference post-processing overrides.
        dtype: precision policy of the predictor's calls (:mod:`sam2.precision`): ``"auto"``,
            ``"float32"`` (upstream's default) or ``"bfloat16"``.
        vos_optimized: not supported (the compiled VOS predictor is SAM 2 only); raises ``ValueError``.
        **overrides: tree settings (``num_pathways``, ``iou_threshold``, ``uncertainty``,
            ``memory_modulation``, ``memory_selection``, ``eps``, ``max_lag``) applied over ``config``;
            an unknown name raises ``ValueError``.
    """
    if vos_optimized:
        raise ValueError(
            "vos_optimized=True is not supported by build_sam2long_video_predictor: the compiled VOS "
            "predictor (SAM2VideoPredictorVOS) is SAM 2 only; use "
            "sam2.build_sam.build_sam2_video_predictor(..., vos_optimized=True) or the SAM 2 tracker"
        )
    settings = SAM2LongConfig.resolve(config, **overrides)
    model_overrides = [*SAM2LongTracker(settings).model_overrides(), *hydra_overrides_extra]
    return build_video_predictor_class(
        config_file,
        ckpt_path,
        device,
        mode,
        model_overrides,
        apply_postprocessing,
        _TARGET,
        model_kwargs={
            "config": settings,
            "store_outputs": store_outputs,
            "batch_objects": batch_objects,
            "dtype": dtype,
        },
    )
