"""Box-tracking datasets in the folder layouts their official downloads unpack to (no model code).

Each reader lists a dataset's sequences (the official list, or every sequence found) and loads one
as a :class:`SotSequence`: its frame files, ground-truth boxes ``(x, y, w, h)`` in pixels (the top
left pixel and the size), and the per-frame flags the evaluators use. Bad inputs raise
:class:`SotInputError` naming the sequence and the file at fault.

Layouts (``--root`` is the folder shown as ``ROOT``):

* ``lasot``, ``lasot_ext``: ``ROOT/<class>/<class>-<n>/img/%08d.jpg``, ``groundtruth.txt``,
  ``full_occlusion.txt``, ``out_of_view.txt``; LaSOT's test list is ``ROOT/testing_set.txt`` of the
  official download (280 sequences), otherwise every sequence found (the test-only download and
  LaSOT-ext hold only test sequences);
* ``got10k_val``, ``got10k_test``: ``ROOT/list.txt``, ``ROOT/<seq>/%08d.jpg``, ``groundtruth.txt``
  (every frame for val, the first box only for test), ``absence.label``, ``cover.label`` and
  ``meta_info.ini`` (val);
* ``trackingnet``: ``ROOT/frames/<seq>/<n>.jpg`` and ``ROOT/anno/<seq>.txt`` (ROOT is a split
  folder such as ``TrackingNet/TEST``; the test split's annotation holds the first box only);
* ``otb100``: ``ROOT/<Seq>/img/%04d.jpg`` and ``groundtruth_rect.txt``; the two-target sequences
  (``groundtruth_rect.1.txt`` / ``.2.txt``, both non-empty) are ``<Seq>-1`` and ``<Seq>-2``;
  sequences annotated from a later frame start where the official OTB configuration says
  (:data:`OTB_START`), and run for as many frames as they have boxes;
* ``uav123``: ``ROOT/data_seq/UAV123/<folder>/%06d.jpg`` and ``ROOT/anno/UAV123/<seq>.txt``; the
  split sequences ``<folder>_<k>`` start where UAV123's configuration says (:data:`UAV123_START`);
* ``nfs``: ``ROOT/<seq>/30/<seq>/%05d.jpg`` and ``ROOT/<seq>/30/<seq>.txt`` (official lines
  ``id xmin ymin xmax ymax frame ...``; when the file holds the 240 fps annotations, every 8th line
  belongs to a 30 fps frame; a count off by one at the end is trimmed, as the got10k toolkit does).
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sam2.utils.frame_sources import FrameSource, read_image_file


class SotInputError(RuntimeError):
    """A sequence's frames, boxes or labels are missing or inconsistent."""


@dataclass(frozen=True)
class SotSequence:
    """One sequence: frame files in order, boxes ``(N, 4)`` (``(1, 4)`` when only the first box is
    public) and, where the dataset has them, visibility flags (LaSOT: neither fully occluded nor
    out of view) and GOT-10k's ``cover`` labels and image size ``(width, height)``."""

    name: str
    frames: tuple[Path, ...]
    boxes: np.ndarray
    visible: Optional[np.ndarray] = None
    cover: Optional[np.ndarray] = None
    resolution: Optional[tuple[int, int]] = None

    @property
    def init_box(self) -> np.ndarray:
        return self.boxes[0]


class FrameFiles(FrameSource):
    """The frames of a sequence as a list of files, each decoded when used (memory flat in length)."""

    kind = "images"

    def __init__(self, paths: Sequence[Path], name: str) -> None:
        self.paths = list(paths)
        self.name = name
        self._size = read_image_file(self.paths[0]).shape[:2]

    @property
    def frame_names(self) -> list[str]:
        return [path.stem for path in self.paths]

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def get(self, index: int) -> np.ndarray:
        path = self.paths[self._check_index(index)]
        return self._check_size(read_image_file(path), f"sequence {self.name!r}, frame file {path}")


# --------------------------------------------------------------------------- text files


def read_boxes(path: Path, sequence: str) -> np.ndarray:
    """Boxes ``(N, 4)`` from a text file, one box per line, separated by commas, tabs or spaces
    (``NaN`` allowed: UAV123's absent frames)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise SotInputError(f"sequence {sequence!r}: cannot read boxes {path}: {error}") from error
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = re.split(r"[,\s]+", line.strip())
        try:
            values = [float(part) for part in parts]
        except ValueError:
            values = []
        if len(values) != 4:
            raise SotInputError(f"sequence {sequence!r}: {path} line {number} is not a box x,y,w,h: {line!r}")
        rows.append(values)
    if not rows:
        raise SotInputError(f"sequence {sequence!r}: {path} holds no box")
    return np.asarray(rows, dtype=np.float64)


def _read_flags(path: Path, sequence: str, count: int) -> np.ndarray:
    """Integer labels, comma- or line-separated (LaSOT's flags, GOT-10k's ``.label`` files)."""
    try:
        text = Path(path).read_text()
        values = np.asarray([int(float(v)) for v in re.split(r"[,\s]+", text.strip()) if v], dtype=np.int64)
    except (OSError, ValueError) as error:
        raise SotInputError(f"sequence {sequence!r}: cannot read labels {path}: {error}") from error
    if len(values) != count:
        raise SotInputError(f"sequence {sequence!r}: {path} has {len(values)} labels for {count} boxes")
    return values


def read_list(path: Path) -> list[str]:
    """Sequence names, one a line (blank lines and ``#`` comments skipped, duplicates dropped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise SotInputError(f"cannot read sequence list {path}: {error}") from error
    names = [line.strip().rstrip("/") for line in lines]
    return list(dict.fromkeys(n for n in names if n and not n.startswith("#")))


def _numbered(
    folder: Path, sequence: str, first: int, count: int, digits: int, suffix: str = ".jpg"
) -> list[Path]:
    """``count`` frame files numbered from ``first`` with ``digits`` digits; the first missing one
    is an error naming it."""
    paths = [folder / f"{n:0{digits}d}{suffix}" for n in range(first, first + count)]
    for index, path in enumerate(paths):
        if not path.is_file():
            raise SotInputError(f"sequence {sequence!r}: frame {index} ({path}) does not exist")
    return paths


def _sorted_frames(folder: Path, sequence: str) -> list[Path]:
    if not folder.is_dir():
        raise SotInputError(f"sequence {sequence!r}: frame folder {folder} does not exist")
    frames = [p for p in folder.iterdir() if p.suffix.lower() == ".jpg" and p.stem.isdigit()]
    if not frames:
        raise SotInputError(f"sequence {sequence!r}: no numbered .jpg frames in {folder}")
    return sorted(frames, key=lambda p: int(p.stem))


def _check_count(sequence: str, frames: Sequence[Path], boxes: np.ndarray, where: Path) -> None:
    if len(boxes) > 1 and len(boxes) != len(frames):
        raise SotInputError(f"sequence {sequence!r}: {len(boxes)} boxes in {where} but {len(frames)} frames")


# --------------------------------------------------------------------------- the datasets


def _lasot_names(root: Path) -> list[str]:
    listed = root / "testing_set.txt"
    if listed.is_file():
        return read_list(listed)
    names = [seq.name for cls in sorted(root.iterdir()) if cls.is_dir() for seq in sorted(cls.iterdir())]
    return [n for n in names if (root / n.rsplit("-", 1)[0] / n / "groundtruth.txt").is_file()]


def _lasot_load(root: Path, name: str) -> SotSequence:
    folder = root / name.rsplit("-", 1)[0] / name
    boxes = read_boxes(folder / "groundtruth.txt", name)
    occluded = _read_flags(folder / "full_occlusion.txt", name, len(boxes))
    out_of_view = _read_flags(folder / "out_of_view.txt", name, len(boxes))
    frames = _numbered(folder / "img", name, 1, len(boxes), 8)
    return SotSequence(name, tuple(frames), boxes, visible=(occluded == 0) & (out_of_view == 0))


def _got10k_names(root: Path) -> list[str]:
    return read_list(root / "list.txt")


def _got10k_resolution(path: Path, sequence: str) -> Optional[tuple[int, int]]:
    """``(width, height)`` from GOT-10k's ``meta_info.ini`` (``resolution: (w, h)``), None without it."""
    if not path.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text())
        text = parser[parser.sections()[0]]["resolution"]
        width, height = (int(v) for v in text.strip("() ").split(","))
    except (configparser.Error, IndexError, KeyError, ValueError) as error:
        raise SotInputError(f"sequence {sequence!r}: no resolution (w, h) in {path}: {error}") from error
    return width, height


def _got10k_load(root: Path, name: str) -> SotSequence:
    folder = root / name
    boxes = read_boxes(folder / "groundtruth.txt", name)
    frames = _sorted_frames(folder, name)
    _check_count(name, frames, boxes, folder / "groundtruth.txt")
    cover = None
    if len(boxes) > 1 and (folder / "cover.label").is_file():
        cover = _read_flags(folder / "cover.label", name, len(boxes))
    visible = None
    if len(boxes) > 1 and (folder / "absence.label").is_file():
        visible = _read_flags(folder / "absence.label", name, len(boxes)) == 0
    resolution = _got10k_resolution(folder / "meta_info.ini", name)
    return SotSequence(name, tuple(frames), boxes, visible=visible, cover=cover, resolution=resolution)


def _trackingnet_names(root: Path) -> list[str]:
    anno = root / "anno"
    if not anno.is_dir():
        raise SotInputError(
            f"TrackingNet annotation folder {anno} does not exist (--root is a split, e.g. TEST)"
        )
    return sorted(p.stem for p in anno.glob("*.txt"))


def _trackingnet_load(root: Path, name: str) -> SotSequence:
    boxes = read_boxes(root / "anno" / f"{name}.txt", name)
    frames = _sorted_frames(root / "frames" / name, name)
    _check_count(name, frames, boxes, root / "anno" / f"{name}.txt")
    return SotSequence(name, tuple(frames), boxes)


# OTB sequences annotated from a later frame: their first annotated frame (official OTB configuration).
OTB_START = {"BlurCar1": 247, "BlurCar3": 3, "BlurCar4": 18, "David": 300, "Tiger1": 6}
# OTB boxes annotated from frame 1 whose first lines the official configuration skips (Tiger1).
OTB_OMIT = {"Tiger1": 5}


def _otb_annotations(folder: Path) -> list[Path]:
    """The non-empty box files of an OTB folder (Human4's ``groundtruth_rect.1.txt`` is empty)."""
    files = [folder / "groundtruth_rect.txt", *(folder / f"groundtruth_rect.{k}.txt" for k in (1, 2))]
    return [f for f in files if f.is_file() and f.read_text().strip()]


def _otb_names(root: Path) -> list[str]:
    names = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        count = len(_otb_annotations(folder))
        names += [folder.name] if count == 1 else [f"{folder.name}-{k}" for k in range(1, count + 1)]
    return names


def _otb_load(root: Path, name: str) -> SotSequence:
    base, _, target = name.partition("-")
    annotations = _otb_annotations(root / base)
    if target:
        gt = root / base / f"groundtruth_rect.{target}.txt"
    elif len(annotations) == 1:
        gt = annotations[0]
    else:
        gt = root / base / "groundtruth_rect.txt"
    boxes = read_boxes(gt, name)[OTB_OMIT.get(base, 0) :]
    folder = root / base / "img"
    digits = len(next(iter(sorted(folder.glob("*.jpg"))), Path("0000.jpg")).stem)
    frames = _numbered(folder, name, OTB_START.get(base, 1), len(boxes), digits)
    return SotSequence(name, tuple(frames), boxes)


# UAV123 sequences split out of one frame folder: their first frame (UAV123's configuration); the
# first part ``<folder>_1`` starts at frame 1.
UAV123_START = {
    "bird1_2": 775, "bird1_3": 1573, "car1_2": 751, "car1_3": 1627, "car16_2": 415,
    "car6_2": 487, "car6_3": 1807, "car6_4": 2953, "car6_5": 3925, "car8_2": 1357,
    "group1_2": 1333, "group1_3": 2515, "group1_4": 3925, "group2_2": 907, "group2_3": 1771,
    "group3_2": 1567, "group3_3": 2827, "group3_4": 4369, "person12_2": 601, "person14_2": 847,
    "person14_3": 1813, "person17_2": 1501, "person19_2": 1243, "person19_3": 2791, "person2_2": 1189,
    "person4_2": 1501, "person5_2": 877, "person7_2": 1249, "person8_2": 1075, "truck4_2": 577,
    "uav1_2": 1555, "uav1_3": 2473,
}  # fmt: skip


def _uav_names(root: Path) -> list[str]:
    anno = root / "anno" / "UAV123"
    if not anno.is_dir():
        raise SotInputError(f"UAV123 annotation folder {anno} does not exist")
    return sorted(p.stem for p in anno.glob("*.txt"))


def _uav_load(root: Path, name: str) -> SotSequence:
    boxes = read_boxes(root / "anno" / "UAV123" / f"{name}.txt", name)
    data = root / "data_seq" / "UAV123"
    folder = data / name
    if not folder.is_dir() and re.fullmatch(r".+_\d", name):
        folder = data / name.rsplit("_", 1)[0]
    frames = _numbered(folder, name, UAV123_START.get(name, 1), len(boxes), 6)
    return SotSequence(name, tuple(frames), boxes)


def _nfs_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "30" / f"{p.name}.txt").is_file())


def _nfs_load(root: Path, name: str) -> SotSequence:
    anno = root / name / "30" / f"{name}.txt"
    frames = _sorted_frames(root / name / "30" / name, name)
    rows = []
    try:
        lines = [line.split() for line in anno.read_text().splitlines() if line.strip()]
        rows = [[float(v) for v in parts[1:5]] for parts in lines]
    except (OSError, ValueError) as error:
        raise SotInputError(f"sequence {name!r}: cannot read NfS annotation {anno}: {error}") from error
    if len(rows) != len(frames) and abs(len(rows) / len(frames) - 8) < 1:
        rows = rows[::8]  # the 240 fps annotations: frame k of 30 fps is line 8k
    if 0 < abs(len(rows) - len(frames)) <= 1:  # off by one at the end, as the got10k toolkit allows
        rows, frames = rows[: len(frames)], frames[: len(rows)]
    xyxy = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    _check_count(name, frames, boxes, anno)
    return SotSequence(name, tuple(frames), boxes)


@dataclass(frozen=True)
class Dataset:
    """A benchmark: how its sequences are listed and loaded, and its result layout
    (``"txt"``: ``<seq>.txt``; ``"got10k"``: ``<seq>/<seq>_001.txt``)."""

    name: str
    list_names: Callable[[Path], list[str]]
    load: Callable[[Path, str], SotSequence]
    layout: str = "txt"


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("lasot", _lasot_names, _lasot_load),
        Dataset("lasot_ext", _lasot_names, _lasot_load),
        Dataset("got10k_val", _got10k_names, _got10k_load, "got10k"),
        Dataset("got10k_test", _got10k_names, _got10k_load, "got10k"),
        Dataset("trackingnet", _trackingnet_names, _trackingnet_load),
        Dataset("otb100", _otb_names, _otb_load),
        Dataset("uav123", _uav_names, _uav_load),
        Dataset("nfs", _nfs_names, _nfs_load),
    )
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def sequence_names(dataset: str, root: Path, seq_list: Optional[Path] = None) -> list[str]:
    """The sequences to run: those of ``seq_list`` (a file, one name a line) or the dataset's list."""
    root = Path(root)
    if not root.is_dir():
        raise SotInputError(f"--root {root} does not exist or is not a folder")
    if seq_list is not None:
        return read_list(Path(seq_list))
    names = get_dataset(dataset).list_names(root)
    if not names:
        raise SotInputError(f"no {dataset} sequence found in {root}")
    return names


def load_sequence(dataset: str, root: Path, name: str) -> SotSequence:
    """Sequence ``name`` of ``dataset``; an absent one is an error naming where it was looked for."""
    try:
        return get_dataset(dataset).load(Path(root), name)
    except FileNotFoundError as error:
        raise SotInputError(f"sequence {name!r} is not in {root}: {error}") from error
