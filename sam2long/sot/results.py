"""Result files in each benchmark's official format, written atomically, and read back.

* ``"txt"`` (LaSOT, LaSOT-ext, TrackingNet, OTB100, UAV123, NfS): ``<out>/<seq>.txt``, one
  ``x,y,w,h`` line per frame, and the per-frame seconds in ``<out>/<seq>_time.txt`` (pytracking's
  names); TrackingNet's server takes a zip of the ``<seq>.txt`` files (:func:`write_zip`);
* ``"got10k"`` (GOT-10k's server and toolkit): ``<out>/<seq>/<seq>_001.txt`` and
  ``<out>/<seq>/<seq>_time.txt``, zipped as they lie for the test server.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2long.mask_io import atomic_write, atomic_write_text
from sam2long.sot.datasets import SotInputError, read_boxes


def result_files(layout: str, name: str) -> tuple[str, str]:
    """``(boxes, times)`` paths of sequence ``name`` relative to the result folder."""
    if layout == "got10k":
        return f"{name}/{name}_001.txt", f"{name}/{name}_time.txt"
    if layout == "txt":
        return f"{name}.txt", f"{name}_time.txt"
    raise ValueError(f"unknown result layout {layout!r}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def write_result(out: Path, layout: str, name: str, boxes: np.ndarray, times: Sequence[float]) -> list[str]:
    """Write one sequence's boxes and times (each file atomic); returns the paths written."""
    box_file, time_file = result_files(layout, name)
    lines = [",".join(_number(v) for v in box) for box in np.asarray(boxes, dtype=np.float64)]
    atomic_write_text(Path(out) / box_file, "\n".join(lines) + "\n")
    atomic_write_text(Path(out) / time_file, "".join(f"{t:.6f}\n" for t in times))
    return [box_file, time_file]


def read_result(pred_root: Path, layout: str, name: str) -> np.ndarray:
    """The boxes ``(N, 4)`` a tracker wrote for sequence ``name``."""
    path = Path(pred_root) / result_files(layout, name)[0]
    if not path.is_file():
        raise SotInputError(f"sequence {name!r}: no result file {path}")
    return read_boxes(path, name)


def write_zip(out: Path, layout: str, names: Sequence[str], zip_path: Path) -> Path:
    """The server submission: TrackingNet's ``<seq>.txt`` files at the top of the zip, GOT-10k's
    ``<seq>/`` folders with boxes and times; every sequence must have its files."""
    members = []
    for name in names:
        files = result_files(layout, name)
        members += files if layout == "got10k" else files[:1]
    missing = [m for m in members if not (Path(out) / m).is_file()]
    if missing:
        raise SotInputError(f"cannot zip {out}: {len(missing)} result files missing, e.g. {missing[0]}")

    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in members:
                archive.write(Path(out) / member, member)

    atomic_write(zip_path, write)
    return Path(zip_path)
