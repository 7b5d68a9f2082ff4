"""Prompts for a video: clicks, boxes and masks per object and frame, from a JSON file or the command line.

A prompts file is a JSON object with one list::

    {"prompts": [
        {"obj": 1, "frame": 0, "points": [[210, 350], [250, 300]], "labels": [1, 0]},
        {"obj": 2, "frame": 0, "box": [300, 0, 500, 400]},
        {"obj": 2, "frame": 40, "points": [[320, 200]], "labels": [1]},
        {"obj": 3, "frame": 12, "mask": "masks/obj3.png"}
    ]}

Every entry names one object (``obj``, an integer id >= 1) on one frame (``frame``, 0-based) and
gives ``points`` with ``labels`` (1 = positive, 0 = negative; default all positive), a ``box``
``[x0, y0, x1, y1]`` (optionally with points), or a ``mask`` PNG (non-zero = object; a path relative
to the prompts file). Coordinates are video pixels. Entries are applied in file order. Errors name
the file and the entry; the predictor checks frame indices and coordinates against the video.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sam2long.mask_io import MaskError, read_mask

_KEYS = {"obj", "frame", "points", "labels", "box", "mask"}


class PromptError(ValueError):
    """A prompt that cannot be used, with where it came from."""


@dataclass(frozen=True)
class Prompt:
    """One object's clicks, box or mask on one frame; ``source`` says where it came from (for errors)."""

    obj_id: int
    frame_idx: int
    points: Optional[list[list[float]]] = None
    labels: Optional[list[int]] = None
    box: Optional[list[float]] = None
    mask_path: Optional[Path] = None
    source: str = "prompt"

    def __post_init__(self) -> None:
        if self.mask_path is not None and (self.points is not None or self.box is not None):
            raise PromptError(f"{self.source}: a mask prompt cannot also have points or a box")
        if self.mask_path is None and self.points is None and self.box is None:
            raise PromptError(f"{self.source}: give points, a box or a mask")
        if self.labels is not None and self.points is None:
            raise PromptError(f"{self.source}: labels without points")

    def apply(self, predictor: Any, state: Any) -> None:
        """Give this prompt to a video predictor; its errors are re-raised naming the source."""
        try:
            if self.mask_path is not None:
                predictor.add_new_mask(state, self.frame_idx, self.obj_id, self.load_mask())
                return
            labels = self.labels
            if self.points is not None and labels is None:
                labels = [1] * len(self.points)
            predictor.add_new_points_or_box(
                state, self.frame_idx, self.obj_id, points=self.points, labels=labels, box=self.box
            )
        except ValueError as error:
            raise PromptError(
                f"{self.source} (object {self.obj_id}, frame {self.frame_idx}): {error}"
            ) from error

    def load_mask(self) -> np.ndarray:
        try:
            return read_mask(self.mask_path) > 0
        except MaskError as error:
            raise PromptError(f"{self.source}: {error}") from error


def _int(entry: dict, key: str, where: str, minimum: int) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PromptError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _numbers(value: Any, where: str, key: str, shape: tuple[Optional[int], ...]) -> list:
    array = np.asarray(value, dtype=object)
    ok = array.ndim == len(shape) and all(n is None or n == s for n, s in zip(shape, array.shape))
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in array.flatten())
    if not ok or array.size == 0:
        wanted = {1: "[x0, y0, x1, y1]", 2: "[[x, y], ...]"}[len(shape)] if key != "labels" else "[1, 0, ...]"
        raise PromptError(f"{where}: '{key}' must be {wanted}, got {value!r}")
    return np.asarray(value, dtype=float).tolist() if key != "labels" else [int(v) for v in value]


def parse_prompt(entry: Any, where: str, base_dir: Path) -> Prompt:
    """One JSON entry as a :class:`Prompt` (``where`` names it in errors)."""
    if not isinstance(entry, dict):
        raise PromptError(f"{where}: expected an object with 'obj' and 'frame', got {type(entry).__name__}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise PromptError(f"{where}: unknown keys {unknown}; valid keys: {sorted(_KEYS)}")
    points = labels = box = mask = None
    if "points" in entry:
        points = _numbers(entry["points"], where, "points", (None, 2))
    if "labels" in entry:
        labels = _numbers(entry["labels"], where, "labels", (None,))
    if "box" in entry:
        box = _numbers(entry["box"], where, "box", (4,))
    if "mask" in entry:
        if not isinstance(entry["mask"], str):
            raise PromptError(f"{where}: 'mask' must be a PNG path, got {entry['mask']!r}")
        mask = base_dir / entry["mask"]
        if not mask.is_file():
            raise PromptError(f"{where}: mask file {mask} does not exist")
    return Prompt(
        obj_id=_int(entry, "obj", where, 1),
        frame_idx=_int(entry, "frame", where, 0),
        points=points,
        labels=labels,
        box=box,
        mask_path=mask,
        source=where,
    )


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read and check a prompts file (schema in the module docstring)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PromptError(f"cannot read prompts file {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise PromptError(f"prompts file {path} is not valid JSON: {error}") from error
    entries = payload.get("prompts") if isinstance(payload, dict) else None
    if not isinstance(entries, list) or not entries:
        raise PromptError(f'prompts file {path}: expected {{"prompts": [...]}} with at least one entry')
    return [parse_prompt(e, f"{path} prompts[{i}]", path.parent) for i, e in enumerate(entries)]


def parse_point(text: str) -> tuple[list[float], int]:
    """``X,Y`` or ``X,Y,LABEL`` from the command line."""
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0.0, 1.0)):
        raise PromptError(f"--point {text!r}: expected X,Y or X,Y,LABEL with LABEL 1 or 0")
    return values[:2], int(values[2]) if len(values) == 3 else 1


def parse_box(text: str) -> list[float]:
    """``X0,Y0,X1,Y1`` from the command line."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise PromptError(f"--box {text!r}: expected X0,Y0,X1,Y1")
    return values


def apply_prompts(predictor: Any, state: Any, prompts: Sequence[Prompt]) -> None:
    """Give every prompt to the predictor, in order."""
    for prompt in prompts:
        prompt.apply(predictor, state)
