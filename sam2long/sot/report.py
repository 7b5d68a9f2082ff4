"""The SAM2Long paper's Table 5 (box tracking: LaSOT AUC, LaSOT-ext AUC, GOT-10k AO), the published
rows beside one row per result folder.

A result folder ``RUN`` holds one sub-folder per dataset, ``RUN/lasot``, ``RUN/lasot_ext`` and
``RUN/got10k_val`` (what ``sam2long sot --out RUN/<dataset>`` writes). The paper's GOT-10k AO is
the test server's; the test boxes are not public, so a local run is scored on GOT-10k val, and the
column says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from sam2long.sot.evaluate import evaluate

# (dataset, column title, score key)
COLUMNS = (
    ("lasot", "LaSOT AUC", "auc"),
    ("lasot_ext", "LaSOT-ext AUC", "auc"),
    ("got10k_val", "GOT-10k AO", "ao"),
)
# SAM2Long paper (Ding et al.), Table 5.
PUBLISHED = {
    "SAM 2 (published)": {"lasot": 70.0, "lasot_ext": 56.9, "got10k_val": 80.7},
    "SAM2Long (published)": {"lasot": 73.9, "lasot_ext": 60.9, "got10k_val": 81.1},
}


def measure(gt_roots: Mapping[str, Path], runs: Sequence[Path]) -> dict[str, dict[str, Optional[float]]]:
    """Each run's score per dataset (None: no ground truth given, or a result missing)."""
    rows: dict[str, dict[str, Optional[float]]] = {str(run): {} for run in runs}
    for dataset, _, key in COLUMNS:
        if dataset not in gt_roots:
            continue
        present = [run for run in runs if (Path(run) / dataset).is_dir()]
        if not present:
            continue
        payload, _ = evaluate(dataset, gt_roots[dataset], [Path(run) / dataset for run in present])
        for run, scores in zip(present, payload["trackers"]):
            complete = not scores["errors"]
            rows[str(run)][dataset] = scores.get(key) if complete else None
    return rows


def format_table(rows: Mapping[str, Mapping[str, Optional[float]]]) -> str:
    """The published rows, then the measured ones; ``-`` where a number is missing."""
    titles = [title + (" (val)" if dataset == "got10k_val" else "") for dataset, title, _ in COLUMNS]
    names = [*PUBLISHED, *rows]
    width = max(len(n) for n in names) + 2
    lines = ["".ljust(width) + "".join(t.rjust(len(t) + 3) for t in titles)]
    for name in names:
        values = PUBLISHED.get(name) or rows[name]
        cells = []
        for (dataset, _, _), title in zip(COLUMNS, titles):
            value = values.get(dataset)
            cells.append(("-" if value is None else f"{value:.1f}").rjust(len(title) + 3))
        lines.append(name.ljust(width) + "".join(cells))
    lines.append("(published GOT-10k AO: the test server; measured: GOT-10k val)")
    return "\n".join(lines)


def report(gt_roots: Mapping[str, Path], runs: Sequence[Path]) -> tuple[str, dict[str, Any]]:
    rows = measure(gt_roots, runs)
    return format_table(rows), {"published": PUBLISHED, "measured": rows}
