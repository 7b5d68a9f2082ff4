"""Convert SA-V annotation JSON files into the per-object PNG layout the evaluators read.

SA-V ships one JSON per video (``sav_XXXXXX_manual.json`` / ``_auto.json``). Its ``masklet``
field lists, for every annotated frame (every 4th frame of the 24 fps video, i.e. 6 fps), one
COCO RLE per object, in the order of ``masklet_id``. The output layout matches SA-V val/test
``Annotations_6fps``::

    {out_root}/{video_id}/{obj_id:03d}/{frame:05d}.png   # frame = annotated index * stride

Each PNG is a single-channel 0/255 mask. By default an object's folder starts at the first
annotated frame where it is visible (its prompt frame, which the evaluator skips) and runs to
the last annotated frame of the video; objects that are never visible get no folder.

Usage::

    python -m sav_dataset.utils.sav_annotations --json sav_000001_manual.json --out_root gt/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam2long.mask_io import write_png
from sav_dataset.utils.rle import decode_rle

SAV_FRAME_STRIDE = 4


@dataclass
class SavAnnotation:
    """The parts of one SA-V annotation JSON the converter needs."""

    video_id: str
    height: int
    width: int
    object_ids: list[int]
    masklet: list[list[dict[str, Any]]]  # [annotated frame][object] -> COCO RLE

    @property
    def num_frames(self) -> int:
        return len(self.masklet)

    def object_mask(self, frame_index: int, object_index: int) -> np.ndarray:
        """Decoded bool mask of one object (by position in ``object_ids``) on one annotated frame."""
        mask = decode_rle(self.masklet[frame_index][object_index])
        if mask.shape != (self.height, self.width):
            raise ValueError(
                f"{self.video_id}: RLE size {mask.shape} differs from video size {(self.height, self.width)}"
            )
        return mask

    def iter_object_masks(self, object_index: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(annotated frame index, mask)`` for one object over the whole video."""
        for frame_index in range(self.num_frames):
            yield frame_index, self.object_mask(frame_index, object_index)


def load_sav_annotation(path: str | Path) -> SavAnnotation:
    """Parse an SA-V annotation JSON file."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    try:
        masklet = data["masklet"]
        object_ids = [int(v) for v in data["masklet_id"]]
        video_id = str(data["video_id"])
    except KeyError as err:
        raise ValueError(f"{path} is not an SA-V annotation file: missing key {err}") from err
    if masklet and any(len(frame) != len(object_ids) for frame in masklet):
        raise ValueError(f"{path}: every masklet frame must hold one RLE per masklet_id")
    if "video_height" in data and "video_width" in data:
        height, width = int(data["video_height"]), int(data["video_width"])
    elif masklet and masklet[0]:
        height, width = (int(v) for v in masklet[0][0]["size"])
    else:
        raise ValueError(f"{path}: cannot determine the video size")
    return SavAnnotation(
        video_id=video_id, height=height, width=width, object_ids=object_ids, masklet=masklet
    )


def write_object_pngs(
    annotation: SavAnnotation,
    out_root: str | Path,
    frame_stride: int = SAV_FRAME_STRIDE,
    from_first_frame: bool = False,
) -> dict[int, list[Path]]:
    """Write per-object PNG folders for one video; returns the written files per object id."""
    video_dir = Path(out_root) / annotation.video_id
    written: dict[int, list[Path]] = {}
    for object_index, object_id in enumerate(annotation.object_ids):
        masks = list(annotation.iter_object_masks(object_index))
        visible = [frame for frame, mask in masks if mask.any()]
        if not visible:
            continue
        first = 0 if from_first_frame else visible[0]
        paths = []
        for frame_index, mask in masks[first:]:
            path = video_dir / f"{object_id:03d}" / f"{frame_index * frame_stride:05d}.png"
            write_png(path, mask.astype(np.uint8) * 255)
            paths.append(path)
        written[object_id] = paths
    return written


def _collect_json_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json", nargs="+", required=True, help="SA-V annotation JSON files or folders of them"
    )
    parser.add_argument("--out_root", required=True, help="output root; one folder per video is created")
    parser.add_argument(
        "--frame_stride", type=int, default=SAV_FRAME_STRIDE, help="video frames per annotated frame"
    )
    parser.add_argument(
        "--from_first_frame",
        action="store_true",
        help="write every annotated frame, not only from each object's first visible frame",
    )
    args = parser.parse_args(argv)
    for json_path in _collect_json_files(args.json):
        annotation = load_sav_annotation(json_path)
        written = write_object_pngs(annotation, args.out_root, args.frame_stride, args.from_first_frame)
        skipped = len(annotation.object_ids) - len(written)
        note = f", {skipped} never-visible object(s) skipped" if skipped else ""
        print(
            f"{annotation.video_id}: {len(written)} object(s), {annotation.num_frames} annotated frames{note}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
