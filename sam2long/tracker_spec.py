"""Which video predictor an application runs: plain SAM 2, or a tracker on the pathway tree with its
settings (SAM2Long, SAMURAI, their combination).

The one place that maps a tracker name to its builder (:func:`build_video_predictor`) and its default
settings (:data:`TREE_TRACKERS`: the preset each tree tracker starts from), and the model of an
application run as one value (:class:`TrackerSpec`): SAM 2 config and checkpoint, the tracker on top,
its settings. ``sam2long segment`` (file and live), ``sam2long demo``,
``sam2long-vos`` and :func:`sam2long.models.build_model_by_name` all build through here.

One meaning of P = 1 everywhere: SAM2Long with ``num_pathways=1`` is SAM2Long with one pathway
(as in the library); plain SAM 2 is the ``"sam2"`` tracker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch

from sam2.precision import check_dtype
from sam2long.config import SAM2LongConfig

TrackerName = Literal["sam2", "sam2long", "samurai", "sam2long-samurai", "dam4sam", "sam2long-dam4sam"]
TREE_TRACKERS: dict[str, Optional[str]] = {
    "sam2long": None,  # SAM2LongConfig() = the official preset
    "samurai": "samurai",  # SAMURAI: one pathway, motion-aware choice, its memory rule
    "sam2long-samurai": "sam2long-samurai",  # the tree with SAMURAI's motion term in the candidate score
    "dam4sam": "dam4sam",  # DAM4SAM: one pathway with the distractor-resolving + recent-appearance memory
    "sam2long-dam4sam": "sam2long-dam4sam",  # the tree whose pathways each keep DAM4SAM's memory
}
"""Trackers built on the pathway tree, and the preset each one's settings default to."""
TRACKERS: tuple[str, ...] = ("sam2", *TREE_TRACKERS)
OFFICIALLY_POSTPROCESSED = frozenset({"samurai", "dam4sam", "sam2long-samurai", "sam2long-dam4sam"})
"""Trackers whose official code builds SAM 2 with its post-processing (dynamic multimask on single-mask
prompts such as a box, binarized prompt memories, hole filling): SAMURAI's and DAM4SAM's scripts do.
Benchmark runs follow it unless told otherwise; SAM 2's and SAM2Long's evaluation scripts turn it off."""


def check_tracker(tracker: str) -> None:
    """ValueError unless ``tracker`` is one of :data:`TRACKERS`."""
    if tracker not in TRACKERS:
        raise ValueError(f"unknown tracker {tracker!r}; choose one of {list(TRACKERS)}")


def build_video_predictor(
    tracker: str,
    config_file: str,
    ckpt_path: Any = None,
    device: Optional[Union[str, torch.device]] = None,
    **kwargs: Any,
) -> Any:
    """The video predictor of ``tracker``: ``kwargs`` go to
    :func:`sam2long.build_sam2long_video_predictor` (tree trackers; ``config`` defaults to the tracker's
    preset) or :func:`sam2.build_sam.build_sam2_video_predictor` (``"sam2"``)."""
    check_tracker(tracker)
    if tracker in TREE_TRACKERS:
        from sam2long.build import build_sam2long_video_predictor

        kwargs.setdefault("config", TREE_TRACKERS[tracker])
        return build_sam2long_video_predictor(config_file, ckpt_path, device, **kwargs)
    from sam2.build_sam import build_sam2_video_predictor

    return build_sam2_video_predictor(config_file, ckpt_path, device, **kwargs)


@dataclass(frozen=True)
class TrackerSpec:
    """The model of a run: SAM 2 config and checkpoint, and the tracker on top of it.

    ``sam2long_config`` (the tree settings, and optionally the name of the ``preset`` they came from) is
    set exactly for the tree trackers; ``vos_optimized`` (upstream's compiled predictor) is SAM 2 only.
    """

    tracker: TrackerName
    sam2_cfg: str
    sam2_checkpoint: str
    sam2long_config: Optional[SAM2LongConfig] = None
    preset: Optional[str] = None
    hydra_overrides: tuple[str, ...] = ()
    apply_postprocessing: bool = False
    vos_optimized: bool = False
    dtype: str = "float32"  # precision policy (sam2.precision): "auto", "float32" or "bfloat16"

    def __post_init__(self) -> None:
        check_tracker(self.tracker)
        if (self.tracker in TREE_TRACKERS) != (self.sam2long_config is not None):
            raise ValueError(f"a SAM2LongConfig is given exactly with the tree trackers {list(TREE_TRACKERS)}")
        if self.preset is not None and self.sam2long_config is None:
            raise ValueError("the sam2 tracker takes no SAM2Long preset")
        if self.vos_optimized and self.tracker != "sam2":
            raise ValueError("the VOS-optimized video predictor is only available with the sam2 tracker")
        check_dtype(self.dtype)

    @classmethod
    def create(
        cls,
        tracker: str,
        sam2_cfg: str,
        sam2_checkpoint: str,
        sam2long_config: Callable[[Optional[str]], SAM2LongConfig],
        preset: Optional[str] = None,
        **options: Any,
    ) -> TrackerSpec:
        """The spec of ``tracker`` by name. For a tree tracker, ``sam2long_config`` is called with the
        preset its settings start from (``preset``, else the tracker's own, :data:`TREE_TRACKERS`); plain
        SAM 2 never reads tree settings."""
        check_tracker(tracker)
        settings = {}
        if tracker in TREE_TRACKERS:
            preset = preset or TREE_TRACKERS[tracker]
            settings = {"sam2long_config": sam2long_config(preset), "preset": preset}
        return cls(tracker, sam2_cfg, sam2_checkpoint, **settings, **options)

    def sam2_baseline(self) -> TrackerSpec:
        """Plain SAM 2 on the same model and settings (the comparison of ``--compare-sam2``)."""
        return dataclasses.replace(self, tracker="sam2", sam2long_config=None, preset=None)

    @property
    def max_lag(self) -> Optional[int]:
        """How many frames the tracker may hold an output back: SAM2Long's ``max_lag``, 0 for SAM 2."""
        return 0 if self.sam2long_config is None else self.sam2long_config.max_lag

    def label(self) -> str:
        """Short human-readable name, for logs."""
        if self.sam2long_config is None:
            return "SAM 2"
        pathways = self.sam2long_config.num_pathways
        name = {
            "sam2long": "SAM2Long",
            "samurai": "SAMURAI",
            "sam2long-samurai": "SAM2Long + SAMURAI motion",
            "dam4sam": "DAM4SAM",
            "sam2long-dam4sam": "SAM2Long + DAM4SAM memory",
        }
        return f"{name[self.tracker]}, {pathways} pathway{'s' if pathways != 1 else ''}"

    def describe(self) -> dict[str, Any]:
        """The tracker and its SAM2Long settings, as recorded in fingerprints and summaries."""
        settings = {} if self.sam2long_config is None else dataclasses.asdict(self.sam2long_config)
        return {"tracker": self.tracker, "preset": self.preset, **settings}

    def fingerprint(self) -> dict[str, Any]:
        """Every model setting that changes the outputs (a resume marker only counts if it matches),
        except the precision, which depends on the device too: the command adds the resolved one."""
        checkpoint = Path(self.sam2_checkpoint).resolve()
        return {
            "sam2_cfg": self.sam2_cfg,
            "sam2_checkpoint": str(checkpoint),
            "checkpoint_bytes": checkpoint.stat().st_size if checkpoint.is_file() else None,
            "hydra_overrides": list(self.hydra_overrides),
            "apply_postprocessing": self.apply_postprocessing,
            **self.describe(),
        }

    def build(
        self, device: Union[str, torch.device], non_overlap_masks: bool, keep_outputs: bool = False
    ) -> Any:
        """Build the predictor on ``device``. ``non_overlap_masks`` sets the model's own non-overlap
        constraint across the objects of one session; ``keep_outputs`` makes SAM2Long keep its
        outputs in the session (clicks after a propagation correct them, as in the demo); a run
        that only consumes outputs as they are yielded leaves it off, so memory stays flat in the
        video length. SAM 2 always keeps them."""
        overrides = [
            f"++model.non_overlap_masks={'true' if non_overlap_masks else 'false'}",
            *self.hydra_overrides,
        ]
        settings = {}
        if self.sam2long_config is not None:
            settings = {"config": self.sam2long_config, "store_outputs": keep_outputs}
        return build_video_predictor(
            self.tracker,
            self.sam2_cfg,
            self.sam2_checkpoint,
            device,
            apply_postprocessing=self.apply_postprocessing,
            hydra_overrides_extra=overrides,
            vos_optimized=self.vos_optimized,
            dtype=self.dtype,
            **settings,
        )


def spec_from_args(
    args: Any, config_file: str, checkpoint: str, default_max_lag: Optional[int] = None, **options: Any
) -> TrackerSpec:
    """The :class:`TrackerSpec` of a command line: ``--tracker``, ``--preset`` and the tree flags
    (:func:`sam2long.config.add_config_arguments`), ``--hydra_overrides``, ``--dtype``. ``default_max_lag``
    (live runs, where outputs must come out) applies when ``--max_lag`` was not given; ``options`` go to
    :class:`TrackerSpec` (``apply_postprocessing``, ``vos_optimized``)."""
    from sam2long.config import config_from_args

    def tree_config(preset: Optional[str]) -> SAM2LongConfig:
        config = config_from_args(args, preset)
        if default_max_lag is not None and getattr(args, "max_lag", None) is None:  # --no_max_lag: False
            config = dataclasses.replace(config, max_lag=default_max_lag)
        return config

    return TrackerSpec.create(
        args.tracker,
        config_file,
        checkpoint,
        tree_config,
        args.preset,
        hydra_overrides=tuple(args.hydra_overrides),
        dtype=args.dtype,
        **options,
    )
