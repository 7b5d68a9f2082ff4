"""Which video predictor a dataset run uses: plain SAM 2 or SAM2Long with a memory-tree config.

One meaning of P = 1 everywhere: SAM2Long with ``num_pathways=1`` is SAM2Long with one pathway
(as in the library); plain SAM 2 is the ``"sam2"`` tracker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch

from sam2.precision import check_dtype
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2long.config import SAM2LongConfig

TrackerName = Literal["sam2", "sam2long"]
TRACKERS: tuple[TrackerName, ...] = ("sam2", "sam2long")


@dataclass(frozen=True)
class TrackerSpec:
    """The model of a run: SAM 2 config and checkpoint, and the tracker on top of it.

    ``tree`` (and optionally the name of the ``preset`` it came from) is set exactly when
    ``tracker == "sam2long"``; ``vos_optimized`` (upstream's compiled predictor) is SAM 2 only.
    """

    tracker: TrackerName
    sam2_cfg: str
    sam2_checkpoint: str
    tree: Optional[SAM2LongConfig] = None
    preset: Optional[str] = None
    hydra_overrides: tuple[str, ...] = ()
    apply_postprocessing: bool = False
    vos_optimized: bool = False
    dtype: str = "float32"  # precision policy (sam2.precision): "auto", "float32" or "bfloat16"

    def __post_init__(self) -> None:
        if self.tracker not in TRACKERS:
            raise ValueError(f"unknown tracker {self.tracker!r}; choose one of {list(TRACKERS)}")
        if self.tracker == "sam2long" and self.tree is None:
            raise ValueError("the sam2long tracker needs a SAM2LongConfig (tree)")
        if self.tracker == "sam2" and (self.tree is not None or self.preset is not None):
            raise ValueError("the sam2 tracker takes no SAM2Long tree settings")
        if self.vos_optimized and self.tracker != "sam2":
            raise ValueError("the VOS-optimized video predictor is only available with the sam2 tracker")
        check_dtype(self.dtype)

    def label(self) -> str:
        """Short human-readable name, for logs."""
        if self.tree is None:
            return "SAM 2"
        return f"SAM2Long, {self.tree.num_pathways} pathway{'s' if self.tree.num_pathways != 1 else ''}"

    def describe(self) -> dict[str, Any]:
        """The tracker and its tree settings, as recorded in fingerprints and summaries."""
        if self.tree is None:
            return {"tracker": "sam2", "preset": None}
        return {"tracker": "sam2long", "preset": self.preset, **dataclasses.asdict(self.tree)}

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

    def build(self, device: Union[str, torch.device], non_overlap_masks: bool) -> SAM2VideoPredictor:
        """Build the predictor on ``device``; ``non_overlap_masks`` sets the model's own non-overlap
        constraint across the objects of one session."""
        overrides = [
            f"++model.non_overlap_masks={'true' if non_overlap_masks else 'false'}",
            *self.hydra_overrides,
        ]
        if self.tree is None:
            from sam2.build_sam import build_sam2_video_predictor

            return build_sam2_video_predictor(
                config_file=self.sam2_cfg,
                ckpt_path=self.sam2_checkpoint,
                device=device,
                apply_postprocessing=self.apply_postprocessing,
                hydra_overrides_extra=overrides,
                vos_optimized=self.vos_optimized,
                dtype=self.dtype,
            )
        from sam2long import build_sam2long_video_predictor

        # Outputs are only consumed as they are yielded, so the session need not keep them
        # (store_outputs=False keeps memory flat in the video length).
        return build_sam2long_video_predictor(
            config_file=self.sam2_cfg,
            ckpt_path=self.sam2_checkpoint,
            device=device,
            config=self.tree,
            store_outputs=False,
            hydra_overrides_extra=overrides,
            apply_postprocessing=self.apply_postprocessing,
            dtype=self.dtype,
        )
