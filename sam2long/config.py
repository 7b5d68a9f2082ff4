"""Hyper-parameters of the SAM2Long memory tree, with validation and named presets.

Presets live in ``configs/sam2long/<name>.yaml`` (flat ``key: value`` files whose keys are the
field names of :class:`SAM2LongConfig`):

- ``official``: the values used by the official README / evaluation commands
  (``--num_pathway 3 --iou_thre 0.1 --uncertainty 2``).
- ``paper``: the same with the paper's memory IoU threshold 0.3.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PRESET_DIR_NAME = "sam2long"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SAM2LongConfig:
    """Settings of the memory tree.

    Attributes:
        num_pathways: number of segmentation pathways P kept per object (P=1 is a greedy tracker that
            still uses memory selection / modulation unless they are switched off).
        iou_threshold: a past frame is eligible as memory only if its predicted IoU is strictly above this
            (and its object-score logit is strictly positive).
        uncertainty: if the largest |object-score logit| over the pathways is strictly above this, the frame is
            "certain" and the top-P candidates by cumulative score are kept; otherwise candidates are
            kept only if their rounded signed IoU is new (diversity).
        memory_modulation: ``(w_low, w_high)`` for the occlusion-ranked key scaling, or ``None`` for no scaling.
        memory_selection: if False, every pathway uses SAM 2's memory layout (most recent frames, positions by
            frame distance) instead of the IoU/occlusion-filtered one.
        eps: added to the IoU before the log in the cumulative score.
        max_lag: if set, force a commitment once the oldest undecided frame is more than ``max_lag`` frames
            behind the newest one (streaming approximation); ``None`` = exact (commit only on coalescence).
    """

    num_pathways: int = 3
    iou_threshold: float = 0.1
    uncertainty: float = 2.0
    memory_modulation: tuple[float, float] | None = (0.95, 1.05)
    memory_selection: bool = True
    eps: float = 1e-5
    max_lag: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_pathways, int) or isinstance(self.num_pathways, bool):
            raise TypeError(f"num_pathways must be an int, got {self.num_pathways!r}")
        if self.num_pathways < 1:
            raise ValueError(f"num_pathways must be >= 1, got {self.num_pathways}")
        if not _is_number(self.iou_threshold) or not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be a number in [0, 1], got {self.iou_threshold!r}")
        if not _is_number(self.uncertainty) or math.isnan(self.uncertainty) or self.uncertainty < 0:
            raise ValueError(f"uncertainty must be a number >= 0, got {self.uncertainty!r}")
        object.__setattr__(self, "memory_modulation", self._check_modulation(self.memory_modulation))
        if not isinstance(self.memory_selection, bool):
            raise TypeError(f"memory_selection must be a bool, got {self.memory_selection!r}")
        if not _is_number(self.eps) or not math.isfinite(self.eps) or self.eps <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        if self.max_lag is not None:
            if not isinstance(self.max_lag, int) or isinstance(self.max_lag, bool):
                raise TypeError(f"max_lag must be an int or None, got {self.max_lag!r}")
            if self.max_lag < 1:
                raise ValueError(f"max_lag must be >= 1 (or None), got {self.max_lag}")

    @staticmethod
    def _check_modulation(value: Any) -> tuple[float, float] | None:
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"memory_modulation must be None or a pair (w_low, w_high), got {value!r}")
        low, high = value
        if not (_is_number(low) and _is_number(high)):
            raise ValueError(f"memory_modulation weights must be numbers, got {value!r}")
        if not (math.isfinite(low) and math.isfinite(high)) or not 0 < low <= high:
            raise ValueError(f"memory_modulation needs 0 < w_low <= w_high (finite), got {value!r}")
        return (float(low), float(high))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SAM2LongConfig:
        """Build a config from a mapping, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SAM2Long config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SAM2LongConfig:
        """Load a flat yaml file (``key: value`` per field)."""
        import yaml  # lazy: only preset/file loading needs PyYAML

        path = Path(path)
        with path.open(encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of SAM2Long settings, got {type(values).__name__}")
        return cls.from_dict(values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SAM2LongConfig:
        """Load ``configs/sam2long/<name>.yaml`` and apply keyword overrides."""
        path = preset_path(name)
        base = cls.from_yaml(path)
        if not overrides:
            return base
        values = {f.name: getattr(base, f.name) for f in fields(cls)}
        values.update(overrides)
        return cls.from_dict(values)


def _preset_dirs() -> list[Path]:
    """Candidate preset folders: the repository layout first, then an installed ``sam2`` package."""
    dirs = [Path(__file__).resolve().parents[1] / "configs" / PRESET_DIR_NAME]
    spec = importlib.util.find_spec("sam2")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(loc) / "configs" / PRESET_DIR_NAME for loc in spec.submodule_search_locations)
    return dirs


def available_presets() -> list[str]:
    """Names of the presets that can be loaded."""
    names: set[str] = set()
    for directory in _preset_dirs():
        if directory.is_dir():
            names.update(p.stem for p in directory.glob("*.yaml"))
    return sorted(names)


def preset_path(name: str) -> Path:
    """Path of preset ``name``; raises ``ValueError`` listing the valid names if it does not exist."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid preset name {name!r}")
    for directory in _preset_dirs():
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ValueError(f"unknown SAM2Long preset {name!r}; available: {available_presets()}")
