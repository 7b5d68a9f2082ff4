"""Hyper-parameters of the SAM2Long memory tree: the one declaration, its presets and its CLI flags.

:class:`SAM2LongConfig` is the only place the tree settings are declared. Each field carries its
help text and command-line aliases in ``dataclasses.field(metadata=...)``; the builder
(:func:`sam2long.build.build_sam2long_video_predictor`) and the command-line flags
(:func:`add_config_arguments`, :func:`config_from_args`) are derived from the fields.

Presets ship as package data in ``sam2long/presets/<name>.yaml`` (flat ``key: value`` files whose keys
are the field names) and are read with :mod:`importlib.resources`, so they work from a wheel:

- ``official``: the values used by the official README / evaluation commands
  (``--num_pathway 3 --iou_thre 0.1 --uncertainty 2``); equal to ``SAM2LongConfig()``.
- ``paper``: the same with the paper's memory IoU threshold 0.3.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from sam2long.memory_policy import MEMORY_RULES
from sam2long.motion import MotionConfig

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PRESET_PACKAGE = "sam2long"
PRESET_DIR = "presets"
_PRESET_SUFFIX = ".yaml"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _setting(default: Any, text: str, aliases: tuple[str, ...] = (), metavar: Any = None) -> Any:
    """A config field with its CLI help, extra flag names (``--name`` form) and metavar as metadata."""
    return field(default=default, metadata={"help": text, "aliases": aliases, "metavar": metavar})


@dataclass(frozen=True)
class SAM2LongConfig:
    """Settings of the memory tree (see each field's ``metadata["help"]``).

    Attributes:
        num_pathways: number of segmentation pathways P kept per object. P=1 is SAM2Long with one greedy
            pathway (still with memory selection / modulation unless they are switched off) everywhere, in
            the library and on the command line; plain SAM 2 is ``build_sam2_video_predictor`` / ``--tracker sam2``.
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
        memory_rule, memory_motion_threshold: which reliable frames a pathway remembers
            (:func:`sam2long.memory_policy.plan_memory`): SAM2Long's rule, or SAMURAI's (also gated by the
            motion IoU, with SAM 2's recent pointers).
        motion_weight, motion_warmup, motion_min_iou: SAMURAI's motion-aware choice
            (:mod:`sam2long.motion`), one Kalman filter per pathway; ``motion_weight=None`` turns it off.
        object_threshold: the model's ``min_obj_score_logits`` the tracker needs (the builders set it).
    """

    num_pathways: int = _setting(
        3,
        "pathways P kept per object (1 = one greedy pathway, still with memory selection/modulation; plain SAM 2 is the sam2 tracker)",
        aliases=("--num_pathway",),
        metavar="P",
    )
    iou_threshold: float = _setting(
        0.1,
        "memory IoU threshold: a frame enters memory only if its predicted IoU is above it",
        aliases=("--iou_thre",),
        metavar="IOU",
    )
    uncertainty: float = _setting(
        2.0,
        "a frame is uncertain (keep only diverse candidates) when every |object-score logit| is <= this",
        metavar="LOGIT",
    )
    memory_modulation: tuple[float, float] | None = _setting(
        (0.95, 1.05), "memory key weights by occlusion rank", metavar=("LOW", "HIGH")
    )
    memory_selection: bool = _setting(
        True, "IoU/occlusion-filtered memory (off: SAM 2's most-recent-frames memory in every pathway)"
    )
    eps: float = _setting(1e-5, "added to the IoU before the log in the cumulative score", metavar="EPS")
    max_lag: int | None = _setting(
        None, "force a decision after this many undecided frames (bounded latency, approximate)", metavar="N"
    )
    memory_rule: str = _setting(
        "sam2long",
        "which frames a pathway remembers (with memory selection): sam2long, samurai (motion score too) "
        "or dam4sam (distractor-resolving + recent-appearance memory)",
        metavar="RULE",
    )
    memory_motion_threshold: float = _setting(
        0.0, "samurai memory rule: a frame enters memory only if its motion IoU is above it", metavar="IOU"
    )
    motion_weight: float | None = _setting(
        None,
        "SAMURAI's motion term: candidates score weight * motion IoU + (1 - weight) * predicted IoU "
        "(Kalman filter per pathway); off when not given",
        metavar="W",
    )
    motion_warmup: int = _setting(
        15, "motion term: reliable frames in a row before motion is scored (SAMURAI's stable frames)", metavar="N"
    )
    motion_min_iou: float = _setting(
        0.3, "motion term: a choice below this predicted IoU restarts the Kalman filter", metavar="IOU"
    )
    object_threshold: float = _setting(
        0.0,
        "object-score logit above which the decoder's masks and pointers count the object present "
        "(a model setting, min_obj_score_logits; SAMURAI uses -1)",
        metavar="LOGIT",
    )

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
        if self.memory_rule not in MEMORY_RULES:
            raise ValueError(f"memory_rule must be one of {list(MEMORY_RULES)}, got {self.memory_rule!r}")
        if self.memory_rule == "dam4sam" and self.memory_modulation is not None:
            raise ValueError("memory_rule dam4sam has its own memory layout: set memory_modulation to None")
        for name in ("memory_motion_threshold", "motion_min_iou", "object_threshold"):
            if not _is_number(getattr(self, name)) or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.motion_weight is not None and (not _is_number(self.motion_weight) or not 0 <= self.motion_weight <= 1):
            raise ValueError(f"motion_weight must be a number in [0, 1] (or None), got {self.motion_weight!r}")
        if not isinstance(self.motion_warmup, int) or isinstance(self.motion_warmup, bool) or self.motion_warmup < 0:
            raise ValueError(f"motion_warmup must be an int >= 0, got {self.motion_warmup!r}")

    def motion(self) -> MotionConfig | None:
        """SAMURAI's motion settings, or None when the motion term is off."""
        if self.motion_weight is None:
            return None
        return MotionConfig(float(self.motion_weight), self.motion_warmup, float(self.motion_min_iou))

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
    def field_names(cls) -> list[str]:
        """The setting names, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def resolve(
        cls, config: Union[SAM2LongConfig, str, Mapping[str, Any], None] = None, **overrides: Any
    ) -> SAM2LongConfig:
        """One config from a base and keyword overrides (overrides win).

        ``config`` is None (the defaults, i.e. the ``official`` preset), a preset name, a
        :class:`SAM2LongConfig` (returned as is when there are no overrides) or a mapping of settings.
        Unknown override names raise ``ValueError`` listing the valid fields.
        """
        unknown = sorted(set(overrides) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown SAM2Long setting(s) {unknown}; valid fields: {cls.field_names()}")
        if config is None:
            base = cls()
        elif isinstance(config, str):
            base = cls.from_preset(config)
        elif isinstance(config, SAM2LongConfig):
            base = config
        elif isinstance(config, Mapping):
            base = cls.from_dict(config)
        else:
            raise TypeError(
                "config must be None, a preset name, a SAM2LongConfig or a mapping, "
                f"got {type(config).__name__}"
            )
        return dataclasses.replace(base, **overrides) if overrides else base

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SAM2LongConfig:
        """Build a config from a mapping, rejecting unknown keys."""
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SAM2Long config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SAM2LongConfig:
        """Load a flat yaml file (``key: value`` per field)."""
        path = Path(path)
        return cls._from_yaml_text(path.read_text(encoding="utf-8"), str(path))

    @classmethod
    def _from_yaml_text(cls, text: str, source: str) -> SAM2LongConfig:
        import yaml  # lazy: only preset/file loading needs PyYAML

        values = yaml.safe_load(text)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(
                f"{source}: expected a mapping of SAM2Long settings, got {type(values).__name__}"
            )
        return cls.from_dict(values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SAM2LongConfig:
        """Load the packaged preset ``name`` and apply keyword overrides."""
        resource = preset_path(name)
        base = cls._from_yaml_text(resource.read_text(encoding="utf-8"), f"preset {name!r}")
        return cls.resolve(base, **overrides)


def _preset_dir() -> Traversable:
    """The packaged preset folder (a real folder for normal installs, any resource reader otherwise)."""
    return importlib.resources.files(PRESET_PACKAGE) / PRESET_DIR


def available_presets() -> list[str]:
    """Names of the presets that can be loaded."""
    directory = _preset_dir()
    if not directory.is_dir():
        return []
    return sorted(
        entry.name[: -len(_PRESET_SUFFIX)]
        for entry in directory.iterdir()
        if entry.name.endswith(_PRESET_SUFFIX) and entry.is_file()
    )


def preset_path(name: str) -> Traversable:
    """Resource of preset ``name``; raises ``ValueError`` listing the valid names if it does not exist."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid preset name {name!r}")
    candidate = _preset_dir() / f"{name}{_PRESET_SUFFIX}"
    if not candidate.is_file():
        raise ValueError(f"unknown SAM2Long preset {name!r}; available: {available_presets()}")
    return candidate


# --------------------------------------------------------------------------- command line


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """``(inner type, allows None)`` of a type hint such as ``int | None``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported SAM2Long field type {hint!r}")
        return args[0], True
    return hint, False


def _flag(name: str) -> str:
    return f"--{name}"


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--preset`` and one flag per :class:`SAM2LongConfig` field (plus its aliases).

    Flags are generated from the fields: ``int``/``float`` fields take one value, tuples take one value
    per element, ``bool`` fields get ``--name`` / ``--no_name``, and fields that may be ``None`` also get
    ``--no_name`` (stores False, read as None by :func:`config_from_args`). Every default is None
    ("not given") so a preset's values survive; values are stored under the field names.
    """
    defaults = SAM2LongConfig()
    parser.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"SAM2Long preset ({', '.join(available_presets())}); the flags below override it",
    )
    hints = typing.get_type_hints(SAM2LongConfig)
    for f in fields(SAM2LongConfig):
        inner, optional = _strip_optional(hints[f.name])
        names = [_flag(f.name), *f.metadata.get("aliases", ())]
        default = getattr(defaults, f.name)
        text = f"{f.metadata['help']} (default: {default})"
        if inner is bool:
            switch = parser.add_mutually_exclusive_group()
            switch.add_argument(
                *names, dest=f.name, action="store_const", const=True, default=None, help=text
            )
            switch.add_argument(
                _flag(f"no_{f.name}"),
                dest=f.name,
                action="store_const",
                const=False,
                help=f"disable {f.name}",
            )
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if f.metadata.get("metavar") is not None:
            kwargs["metavar"] = f.metadata["metavar"]
        if typing.get_origin(inner) is tuple:
            element_types = typing.get_args(inner)
            if Ellipsis in element_types or len(set(element_types)) != 1:
                raise TypeError(f"unsupported SAM2Long field type {inner!r} for {f.name}")
            kwargs.update(nargs=len(element_types), type=element_types[0])
        else:
            kwargs["type"] = inner
        if optional:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(*names, **kwargs)
            group.add_argument(
                _flag(f"no_{f.name}"),
                dest=f.name,
                action="store_const",
                const=False,
                help=f"set {f.name} to None",
            )
        else:
            parser.add_argument(*names, **kwargs)


def config_from_args(namespace: argparse.Namespace, default_preset: str | None = None) -> SAM2LongConfig:
    """The config of ``--preset`` (else ``default_preset``, else the defaults) with the explicitly
    given flags applied."""
    hints = typing.get_type_hints(SAM2LongConfig)
    overrides: dict[str, Any] = {}
    for name in SAM2LongConfig.field_names():
        value = getattr(namespace, name, None)
        if value is None:
            continue
        _, optional = _strip_optional(hints[name])
        if optional and value is False:
            value = None
        elif isinstance(value, list):
            value = tuple(value)
        overrides[name] = value
    return SAM2LongConfig.resolve(getattr(namespace, "preset", None) or default_preset, **overrides)
