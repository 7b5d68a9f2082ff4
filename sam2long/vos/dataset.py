"""The file side of dataset VOS inference (no model code, so it tests without one).

* video discovery (frame folders or video files) and deterministic sharding of the video list;
* the input masks of a video in the two layouts of upstream's VOS script, one palette PNG per
  frame holding every object (DAVIS, MOSE, YouTube-VOS, LVOS) or one PNG per object and frame
  in ``{obj_id:03d}/`` folders (SA-V), collected with errors that name the video, frame,
  object and file at fault;
* (the predicted masks are written in the same layouts by :mod:`sam2long.export`'s PNG writers);
* per-video "done" markers that make ``--resume`` skip finished videos.

Mask files are read and written with :mod:`sam2long.mask_io`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sam2long.mask_io import (
    MaskError,
    atomic_write_json,
    read_mask_with_palette,
    split_objects,
)

VIDEO_FILE_SUFFIXES = (".mp4", ".MP4", ".avi", ".mov", ".mkv", ".webm")
MARKER_VERSION = 1


class VosInputError(RuntimeError):
    """A dataset input (video, frame or mask) is missing or inconsistent."""


# --------------------------------------------------------------------------- videos and shards


@dataclass(frozen=True)
class VideoEntry:
    """A video of the dataset: its name (output folder name) and where its frames are."""

    name: str
    path: Path  # a frame folder or a video file


def _read_video_list(list_file: Path) -> list[str]:
    names = []
    for line in Path(list_file).read_text().splitlines():
        name = line.strip().rstrip("/")
        if name and not name.startswith("#"):
            names.append(name)
    return names


def _strip_video_suffix(base: Path, name: str) -> str:
    """``clip.mp4`` -> ``clip`` when the list names a video file of ``base`` with its suffix."""
    path = base / name
    if path.suffix in VIDEO_FILE_SUFFIXES and path.is_file():
        return path.stem
    return name


def list_video_names(base_video_dir: Path, video_list_file: Optional[Path]) -> list[str]:
    """Video names from the list file (order kept, duplicates dropped) or, without one, every
    sub-folder and video file of ``base_video_dir`` in sorted order."""
    base = Path(base_video_dir)
    if video_list_file is not None:
        names = [_strip_video_suffix(base, name) for name in _read_video_list(Path(video_list_file))]
    else:
        if not base.is_dir():
            raise VosInputError(f"--base_video_dir {base} does not exist or is not a folder")
        names = []
        for entry in sorted(base.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                names.append(entry.name)
            elif entry.is_file() and entry.suffix in VIDEO_FILE_SUFFIXES:
                names.append(entry.stem)
    return list(dict.fromkeys(names))


def resolve_video(base_video_dir: Path, name: str) -> VideoEntry:
    """Locate video ``name``: a frame folder ``<base>/<name>`` or a file ``<base>/<name>.mp4`` (etc.)."""
    base = Path(base_video_dir)
    folder = base / name
    if folder.is_dir():
        return VideoEntry(name, folder)
    for suffix in VIDEO_FILE_SUFFIXES:
        candidate = base / f"{name}{suffix}"
        if candidate.is_file():
            return VideoEntry(name, candidate)
    raise VosInputError(
        f"video {name!r}: neither a frame folder {folder} nor a video file {folder}.mp4 exists"
    )


def shard_of(names: Sequence[str], num_shards: int, shard_id: int) -> list[str]:
    """The videos of shard ``shard_id``: every ``num_shards``-th name starting at ``shard_id``.

    Every process must see the same list (same file or same folder); names are deduplicated by
    :func:`list_video_names`, so the shards partition the list.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    return list(names[shard_id::num_shards])


def resolve_shards(
    num_shards: Optional[int], shard_id: Optional[int], environ: Mapping[str, str]
) -> tuple[int, int]:
    """``(num_shards, shard_id)``: the given values, else torchrun's ``WORLD_SIZE`` / ``RANK``,
    else ``(1, 0)``."""
    if "WORLD_SIZE" in environ and "RANK" in environ:
        try:
            env_shards, env_id = int(environ["WORLD_SIZE"]), int(environ["RANK"])
        except ValueError:
            raise ValueError(
                f"$WORLD_SIZE and $RANK must be integers, got {environ['WORLD_SIZE']!r} and {environ['RANK']!r}"
            ) from None
    else:
        env_shards, env_id = 1, 0
    return (
        num_shards if num_shards is not None else env_shards,
        shard_id if shard_id is not None else env_id,
    )


# --------------------------------------------------------------------------- input masks


@dataclass
class MaskInputs:
    """Input masks of one video, ``masks[obj_id][frame_idx]`` (bool ``(H, W)``), and the palette
    of the input PNGs (None for grayscale inputs)."""

    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    palette: Optional[list[int]] = None

    def add(self, obj_id: int, frame_idx: int, mask: np.ndarray) -> None:
        self.masks.setdefault(obj_id, {})[frame_idx] = mask

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.masks)

    def first_frame(self, obj_id: int) -> int:
        return min(self.masks[obj_id])


@dataclass
class MaskFolder:
    """The input masks of one video: ``<input_mask_dir>/<video>/`` in either layout."""

    root: Path
    video: str
    per_obj_png_file: bool
    frame_size: tuple[int, int]  # (height, width) of the video frames

    def object_dirs(self) -> dict[int, Path]:
        """Per-object layout: the ``{obj_id:03d}`` folders, by object id."""
        if not self.root.is_dir():
            return {}
        dirs = {int(p.name): p for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()}
        return dict(sorted(dirs.items()))

    def has_frame(self, frame_name: str) -> bool:
        """Whether any input mask exists for ``frame_name``."""
        if not self.per_obj_png_file:
            return (self.root / f"{frame_name}.png").is_file()
        return any((d / f"{frame_name}.png").is_file() for d in self.object_dirs().values())

    def _checked(self, path: Path, frame_name: str) -> tuple[np.ndarray, Optional[list[int]]]:
        try:
            labels, palette = read_mask_with_palette(path)
        except MaskError as error:
            raise VosInputError(f"video {self.video!r}, frame {frame_name!r}: {error}") from error
        if labels.shape != tuple(self.frame_size):
            raise VosInputError(
                f"video {self.video!r}, frame {frame_name!r}: mask {path} is "
                f"{labels.shape[1]}x{labels.shape[0]} (WxH) but the video frames are "
                f"{self.frame_size[1]}x{self.frame_size[0]}"
            )
        return labels, palette

    def load(self, frame_name: str, allow_missing: bool) -> tuple[dict[int, np.ndarray], Optional[list[int]]]:
        """Boolean masks of the objects annotated on ``frame_name`` and the PNG palette.

        With ``allow_missing=False`` a missing file is an error naming it; otherwise frames or
        objects without a file are left out.
        """
        if not self.per_obj_png_file:
            path = self.root / f"{frame_name}.png"
            if not path.is_file():
                if allow_missing:
                    return {}, None
                raise VosInputError(
                    f"video {self.video!r}: input mask {path} for frame {frame_name!r} does not exist"
                )
            labels, palette = self._checked(path, frame_name)
            return split_objects(labels), palette
        dirs = self.object_dirs()
        if not dirs and not allow_missing:
            raise VosInputError(
                f"video {self.video!r}: no per-object mask folders ({{obj_id:03d}}/) in {self.root}"
            )
        per_obj, palette = {}, None
        for obj_id, obj_dir in dirs.items():
            path = obj_dir / f"{frame_name}.png"
            if not path.is_file():
                if allow_missing:
                    continue
                raise VosInputError(
                    f"video {self.video!r}, object {obj_id}: input mask {path} for frame {frame_name!r} does not exist"
                )
            labels, palette = self._checked(path, frame_name)
            per_obj[obj_id] = labels > 0
        return per_obj, palette


_LATER_HINT = (
    "add --track_object_appearing_later_in_video for datasets whose objects may first appear "
    "after frame 0 (e.g. LVOS, YouTube-VOS)"
)


def collect_inputs(
    folder: MaskFolder,
    frame_names: Sequence[str],
    use_all_masks: bool,
    track_object_appearing_later: bool,
) -> MaskInputs:
    """Gather the input masks of a video following upstream's protocols.

    Default: the masks of frame 0 (or, with ``use_all_masks``, of every frame that has a mask
    file), with the object set fixed by the first input frame. With
    ``track_object_appearing_later``: every object's first non-empty mask (or all of them with
    ``use_all_masks``), whatever frame it is on.
    """
    if not folder.root.is_dir():
        raise VosInputError(f"video {folder.video!r}: input mask folder {folder.root} does not exist")
    inputs = MaskInputs()
    if track_object_appearing_later:
        for frame_idx, name in enumerate(frame_names):
            if not folder.has_frame(name):
                continue
            per_obj, palette = folder.load(name, allow_missing=True)
            inputs.palette = palette if palette is not None else inputs.palette
            for obj_id, mask in per_obj.items():
                if not mask.any() or (obj_id in inputs.masks and not use_all_masks):
                    continue
                inputs.add(obj_id, frame_idx, mask)
        if not inputs.masks:
            raise VosInputError(
                f"video {folder.video!r}: no non-empty object mask on any frame in {folder.root}"
            )
        return inputs

    if use_all_masks:
        frame_inds = [i for i, name in enumerate(frame_names) if folder.has_frame(name)]
        if not frame_inds:
            raise VosInputError(f"video {folder.video!r}: no input mask for any frame in {folder.root}")
    else:
        frame_inds = [0]
    known: Optional[set[int]] = None
    for frame_idx in frame_inds:
        name = frame_names[frame_idx]
        if not folder.has_frame(name):
            raise VosInputError(
                f"video {folder.video!r}: missing first-frame mask, no input mask for frame {name!r} in "
                f"{folder.root}; {_LATER_HINT}"
            )
        per_obj, palette = folder.load(name, allow_missing=False)
        inputs.palette = palette if palette is not None else inputs.palette
        if known is None:
            known = set(per_obj)
            if not known:
                raise VosInputError(
                    f"video {folder.video!r}: the first input mask (frame {name!r}) contains no object; {_LATER_HINT}"
                )
        for obj_id, mask in per_obj.items():
            if obj_id not in known:
                raise VosInputError(
                    f"video {folder.video!r}, frame {name!r}: unknown object id {obj_id} (not on the first "
                    f"input frame {frame_names[frame_inds[0]]!r}, objects {sorted(known)}); {_LATER_HINT}"
                )
            inputs.add(obj_id, frame_idx, mask)
    return inputs


# --------------------------------------------------------------------------- resume markers


@dataclass
class DoneMarkers:
    """Per-video completion markers, ``<state_dir>/done/<video>.json``.

    A marker is written (atomically, synced) only after every output file of the video has been
    written. A video counts as complete when its marker parses, was produced with the same
    output-affecting settings (``fingerprint``) and every file it lists still exists.
    """

    state_dir: Path
    output_dir: Path

    def path(self, video: str) -> Path:
        return self.state_dir / "done" / f"{video}.json"

    def read(self, video: str) -> Optional[dict[str, Any]]:
        try:
            marker = json.loads(self.path(video).read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def complete(self, video: str, fingerprint: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The marker of ``video`` if its outputs are complete for these settings, else None."""
        marker = self.read(video)
        if marker is None or marker.get("version") != MARKER_VERSION:
            return None
        if marker.get("fingerprint") != json.loads(json.dumps(dict(fingerprint))):
            return None
        files = marker.get("files")
        if not isinstance(files, list) or not files:
            return None
        video_dir = self.files_dir(video)
        if not all((video_dir / name).is_file() for name in files):
            return None
        return marker

    def files_dir(self, video: str) -> Path:
        """The folder the marker's file names are relative to (a layout may share one folder)."""
        return self.output_dir / video

    def clear(self, video: str) -> None:
        self.path(video).unlink(missing_ok=True)

    def write(
        self, video: str, fingerprint: Mapping[str, Any], files: Iterable[str], stats: Mapping[str, Any]
    ) -> None:
        payload = {
            "version": MARKER_VERSION,
            "video": video,
            "fingerprint": dict(fingerprint),
            "stats": dict(stats),
            "files": sorted(files),
        }
        atomic_write_json(self.path(video), payload, fsync=True)
