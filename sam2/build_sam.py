"""Build SAM 2 models from hydra configs and (official) checkpoints.

Config names are resolved by hydra inside the ``sam2`` package, e.g.
``configs/sam2.1/sam2.1_hiera_t.yaml`` or the legacy ``sam2_hiera_t.yaml``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import sam2  # noqa: F401  (registers the package as hydra's config module)

if TYPE_CHECKING:
    from sam2.tracker import Tracker

# Hugging Face model id -> (config name, checkpoint file name in that repo).
HF_MODEL_ID_TO_FILENAMES: dict[str, tuple[str, str]] = {
    "facebook/sam2-hiera-tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt"),
    "facebook/sam2-hiera-small": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt"),
    "facebook/sam2-hiera-base-plus": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt"),
    "facebook/sam2-hiera-large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt"),
    "facebook/sam2.1-hiera-tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "facebook/sam2.1-hiera-small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "facebook/sam2.1-hiera-base-plus": (
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "sam2.1_hiera_base_plus.pt",
    ),
    "facebook/sam2.1-hiera-large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}

# Mask-decoder post-processing used for inference: fall back to the multimask output when
# the single-mask prediction is unstable.
_DYNAMIC_MULTIMASK_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]

# Extra video post-processing: encode click-derived masks as the binary masks users see,
# and fill small holes in the low-res masks.
_VIDEO_POSTPROCESSING_OVERRIDES = [
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
]


def default_device(environ: Optional[Mapping[str, str]] = None) -> str:
    """The repository's one device default: the local rank's GPU under torchrun, else CUDA, else CPU.

    ``environ`` defaults to ``os.environ``; ``LOCAL_RANK`` (set by torchrun) selects ``cuda:<rank>``.
    Upstream hard-codes ``"cuda"``.
    """
    if not torch.cuda.is_available():
        return "cpu"
    environ = os.environ if environ is None else environ
    return f"cuda:{environ['LOCAL_RANK']}" if "LOCAL_RANK" in environ else "cuda"


def _build(
    config_file: str,
    overrides: list[str],
    ckpt_path: Optional[Union[str, os.PathLike]],
    device: Optional[Union[str, torch.device]],
    mode: str,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """Compose the config, instantiate the model, load weights, move and set the mode.

    ``model_kwargs`` are extra constructor arguments of the model class (e.g. a subclass's own
    settings). They are passed to the constructor as they are: hydra's ``instantiate(cfg, **kwargs)``
    would merge them into the config first and so turn dataclasses into ``DictConfig``.
    """
    cfg = compose(config_name=config_file, overrides=overrides)
    OmegaConf.resolve(cfg)
    make_model = instantiate(cfg.model, _partial_=True, _recursive_=True)
    model = make_model(**dict(model_kwargs or {}))
    _load_checkpoint(model, ckpt_path)
    model = model.to(device if device is not None else default_device())
    if mode == "eval":
        model.eval()
    return model


def build_sam2(
    config_file: str,
    ckpt_path: Optional[Union[str, os.PathLike]] = None,
    device: Optional[Union[str, torch.device]] = None,
    mode: str = "eval",
    hydra_overrides_extra: Sequence[str] = (),
    apply_postprocessing: bool = True,
    dtype: str = "float32",
    **kwargs: Any,
) -> nn.Module:
    """Build a ``SAM2Base`` (image model) from a config name and optional checkpoint.

    ``device=None`` picks CUDA when available, else CPU. ``dtype`` is the precision policy of the
    predictors' calls (:mod:`sam2.precision`: ``"auto"``, ``"float32"`` as upstream, ``"bfloat16"``).
    """
    overrides = list(hydra_overrides_extra)
    if apply_postprocessing:
        overrides += _DYNAMIC_MULTIMASK_OVERRIDES
    return _build(config_file, overrides, ckpt_path, device, mode, {"dtype": dtype})


def build_sam2_video_predictor(
    config_file: str,
    ckpt_path: Optional[Union[str, os.PathLike]] = None,
    device: Optional[Union[str, torch.device]] = None,
    mode: str = "eval",
    hydra_overrides_extra: Sequence[str] = (),
    apply_postprocessing: bool = True,
    vos_optimized: bool = False,
    dtype: str = "float32",
    tracker: Optional[Tracker] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a ``SAM2VideoPredictor`` (or the compiled VOS variant with ``vos_optimized``).

    With ``vos_optimized`` the image encoder is compiled only when the model goes to a CUDA
    device (upstream always compiles, which is slow or unsupported elsewhere). ``dtype``: see
    :func:`build_sam2`. ``tracker`` chooses what propagation remembers (:mod:`sam2.tracker`; default
    SAM 2's own); the model overrides it needs come before ``hydra_overrides_extra``.
    """
    device = device if device is not None else default_device()
    extra = [*(tracker.model_overrides() if tracker is not None else []), *hydra_overrides_extra]
    if vos_optimized:
        target = "sam2.sam2_video_predictor_vos.SAM2VideoPredictorVOS"
        if torch.device(device).type == "cuda":
            extra.insert(0, "++model.compile_image_encoder=True")
    else:
        target = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if tracker is not None:
        model_kwargs["tracker"] = tracker
    return build_video_predictor_class(
        config_file, ckpt_path, device, mode, extra, apply_postprocessing, target, model_kwargs
    )


def build_video_predictor_class(
    config_file: str,
    ckpt_path: Optional[Union[str, os.PathLike]],
    device: Optional[Union[str, torch.device]],
    mode: str,
    hydra_overrides_extra: Sequence[str],
    apply_postprocessing: bool,
    target: str,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> nn.Module:
    """Build the video predictor class ``target`` (a dotted path), with extra constructor arguments.

    The path shared by :func:`build_sam2_video_predictor` and the builders of predictors that bring
    their own tracker (SAM2Long), which pass its settings as ``model_kwargs`` at construction time.
    """
    overrides = [f"++model._target_={target}", *hydra_overrides_extra]
    if apply_postprocessing:
        overrides += _DYNAMIC_MULTIMASK_OVERRIDES + _VIDEO_POSTPROCESSING_OVERRIDES
    return _build(config_file, overrides, ckpt_path, device, mode, model_kwargs)


def _hf_download(model_id: str) -> tuple[str, str]:
    """Fetch a checkpoint from the Hugging Face hub; returns (config name, local path)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise ImportError(
            "Loading models from the Hugging Face hub needs `huggingface_hub` "
            "(pip install huggingface_hub, or the package's [hf] extra)."
        ) from err
    if model_id not in HF_MODEL_ID_TO_FILENAMES:
        known = ", ".join(sorted(HF_MODEL_ID_TO_FILENAMES))
        raise ValueError(f"unknown model id {model_id!r}; known ids: {known}")
    config_name, checkpoint_name = HF_MODEL_ID_TO_FILENAMES[model_id]
    return config_name, hf_hub_download(repo_id=model_id, filename=checkpoint_name)


def build_sam2_hf(model_id: str, **kwargs: Any) -> nn.Module:
    """``build_sam2`` with config and checkpoint taken from a Hugging Face model id."""
    config_name, ckpt_path = _hf_download(model_id)
    return build_sam2(config_file=config_name, ckpt_path=ckpt_path, **kwargs)


def build_sam2_video_predictor_hf(model_id: str, **kwargs: Any) -> nn.Module:
    """``build_sam2_video_predictor`` with config and checkpoint from a Hugging Face model id."""
    config_name, ckpt_path = _hf_download(model_id)
    return build_sam2_video_predictor(config_file=config_name, ckpt_path=ckpt_path, **kwargs)


def _load_checkpoint(model: nn.Module, ckpt_path: Optional[Union[str, os.PathLike]]) -> None:
    """Load ``{"model": state_dict}`` from ``ckpt_path`` strictly.

    Raises ``FileNotFoundError`` naming the path when there is no such file, ``RuntimeError``
    naming the file when it is not a PyTorch checkpoint (torch's own errors, e.g. a bare
    ``KeyError: '101'`` for a text file, do not say which file), and ``RuntimeError`` naming the
    file and listing every missing and unexpected key (and any shape mismatch) instead of
    stopping at the first problem.
    """
    if ckpt_path is None:
        return
    path = os.fspath(ckpt_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist (or is not a file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if os.path.getsize(path) == 0:
            reason = "the file is empty (0 bytes)"
        raise RuntimeError(f"checkpoint {path!r} is not a PyTorch checkpoint: {reason}") from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise RuntimeError(f"checkpoint {os.fspath(ckpt_path)!r} has no 'model' entry")
    state_dict = checkpoint["model"]

    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {os.fspath(ckpt_path)!r} does not match the model:"]
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {k}" for k in keys)
        raise RuntimeError("\n".join(lines))
    model.load_state_dict(state_dict)
    logging.info("Loaded checkpoint %s", os.fspath(ckpt_path))
