"""Per-object score containers, aggregation, result tables and the per-video process pool."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing import Pool
from typing import TypeVar

import numpy as np

from sam2long.mask_io import atomic_write_text
from sav_dataset.utils.metrics import BOUNDARY_TOLERANCE, boundary_f_measure, region_similarity

# Frames are scored in chunks of this many to bound memory on long, high-resolution videos.
FRAME_CHUNK = 16

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")


@dataclass
class ObjectScores:
    """Per-frame J and F (in [0, 1]) of one object over the frames it is evaluated on."""

    video: str
    object_id: str
    frames: list[str]
    j: np.ndarray
    f: np.ndarray
    group: str = ""

    @property
    def j_mean(self) -> float:
        """Mean J over the evaluated frames, in percent."""
        return float(np.mean(self.j) * 100)

    @property
    def f_mean(self) -> float:
        """Mean F over the evaluated frames, in percent."""
        return float(np.mean(self.f) * 100)

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2


@dataclass
class Summary:
    """Dataset-level scores in percent: the mean over objects of the per-object means."""

    j: float
    f: float
    num_objects: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def summarize(objects: Sequence[ObjectScores]) -> Summary:
    """Average the per-object J and F means over all objects (NaN when there are none)."""
    if not objects:
        return Summary(j=float("nan"), f=float("nan"), num_objects=0)
    j = float(np.array([o.j_mean for o in objects]).mean())
    f = float(np.array([o.f_mean for o in objects]).mean())
    return Summary(j=j, f=f, num_objects=len(objects))


def score_pair(
    pred: np.ndarray,
    gt: np.ndarray,
    void: np.ndarray | None = None,
    tolerance: float = BOUNDARY_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (J, F) for binary stacks of shape (T, H, W)."""
    return region_similarity(pred, gt, void), boundary_f_measure(pred, gt, void, tolerance)


def chunks(count: int, size: int = FRAME_CHUNK) -> Iterable[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``range(count)`` in pieces of at most ``size``."""
    for start in range(0, count, size):
        yield start, min(start + size, count)


def default_num_processes() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def map_videos(
    function: Callable[[JobT], ResultT],
    jobs: Sequence[JobT],
    num_processes: int,
    progress: bool = False,
) -> list[ResultT]:
    """Run ``function`` on every job, in a process pool when ``num_processes > 1``; keeps job order."""
    processes = max(1, min(num_processes, len(jobs)))
    if processes == 1:
        iterator: Iterable[ResultT] = map(function, jobs)
        pool = None
    else:
        pool = Pool(processes)
        iterator = pool.imap(function, jobs)
    try:
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(jobs), desc="videos")
        results = list(iterator)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    if pool is not None:
        pool.close()
        pool.join()
    return results


def format_float(value: float, digits: int) -> str:
    return "nan" if np.isnan(value) else f"{value:.{digits}f}"


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV file atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table with left-aligned first columns and right-aligned numeric columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = []
    for row in [header, *rows]:
        cells = []
        for index, (cell, width) in enumerate(zip(row, widths)):
            text = str(cell)
            cells.append(text.ljust(width) if index < 2 else text.rjust(width))
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
