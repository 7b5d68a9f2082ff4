"""Per-frame curve: mean J&F over normalised time, for one or more prediction roots.

Every object's evaluated frames are spread over [0, 1] (frame ``i`` of ``n`` sits at
``(i + 0.5) / n``) and binned; each bin shows the mean J&F of all frames that fall in it. A
falling curve means the tracker drifts as videos go on, which is what long-term memory
designs such as SAM2Long try to prevent. The plot is drawn with matplotlib when it is
installed and with OpenCV otherwise; the binned values are also written next to the image
as CSV.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sam2long.mask_io import atomic_write_bytes
from sav_dataset.utils.scoring import ObjectScores, format_float, write_csv

# Distinct line colours (RGB), the matplotlib "tab10" cycle.
_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def per_frame_curve(
    objects: Sequence[ObjectScores], bins: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres, mean J&F in percent per bin (NaN where empty) and the number of frames per bin."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    sums = np.zeros(bins)
    counts = np.zeros(bins, dtype=np.int64)
    for obj in objects:
        n = len(obj.j)
        if n == 0:
            continue
        positions = (np.arange(n) + 0.5) / n
        index = np.minimum((positions * bins).astype(np.int64), bins - 1)
        jf = (np.asarray(obj.j) + np.asarray(obj.f)) * 50.0
        sums += np.bincount(index, weights=jf, minlength=bins)
        counts += np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    centres = (np.arange(bins) + 0.5) / bins
    return centres, means, counts


def _unique_labels(names: Sequence[str]) -> list[str]:
    short = [Path(name.rstrip("/")).name or name for name in names]
    return [s if short.count(s) == 1 else name for s, name in zip(short, names)]


def _y_range(series: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([s[~np.isnan(s)] for s in series]) if series else np.array([])
    if values.size == 0:
        return 0.0, 100.0
    low = max(0.0, math.floor(values.min() / 10) * 10 - 10)
    high = min(100.0, math.ceil(values.max() / 10) * 10 + 10) if values.max() < 100 else 100.0
    return (low, high) if high > low else (max(0.0, high - 10), high)


def _render_opencv(
    centres: np.ndarray, series: Sequence[np.ndarray], labels: Sequence[str], title: str
) -> bytes:
    width, height = 1060, 560
    left, right, top, bottom = 70, 250, 50, 70
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    y_low, y_high = _y_range(series)
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(t: float, value: float) -> tuple[int, int]:
        x = left + t * plot_w
        y = top + (1 - (value - y_low) / (y_high - y_low)) * plot_h
        return int(round(x)), int(round(y))

    font = cv2.FONT_HERSHEY_SIMPLEX
    grey, black = (220, 220, 220), (0, 0, 0)
    y_step = 5 if y_high - y_low <= 30 else 10
    for tick in np.arange(y_low, y_high + 1e-9, y_step):
        x0, y = to_px(0, tick)
        cv2.line(canvas, (x0, y), (left + plot_w, y), grey, 1)
        cv2.putText(canvas, f"{tick:g}", (x0 - 45, y + 5), font, 0.5, black, 1, cv2.LINE_AA)
    for tick in np.linspace(0, 1, 6):
        x, y0 = to_px(tick, y_low)
        cv2.line(canvas, (x, top), (x, y0), grey, 1)
        cv2.putText(canvas, f"{tick:.1f}", (x - 12, y0 + 22), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), black, 1)
    cv2.putText(
        canvas,
        "normalised time in video",
        (left + plot_w // 2 - 110, height - 20),
        font,
        0.6,
        black,
        1,
        cv2.LINE_AA,
    )
    cv2.putText(canvas, "J&F", (20, top - 18), font, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left + 60, top - 18), font, 0.65, black, 1, cv2.LINE_AA)

    for index, (values, label) in enumerate(zip(series, labels)):
        red, green, blue = _COLOURS[index % len(_COLOURS)]
        colour = (blue, green, red)
        points = [to_px(t, v) for t, v in zip(centres, values) if not np.isnan(v)]
        if len(points) > 1:
            cv2.polylines(canvas, [np.array(points, dtype=np.int32)], False, colour, 2, cv2.LINE_AA)
        for point in points:
            cv2.circle(canvas, point, 3, colour, -1, cv2.LINE_AA)
        legend_x, legend_y = left + plot_w + 15, top + 15 + 24 * index
        text = label if len(label) <= 28 else "..." + label[-25:]
        cv2.line(canvas, (legend_x, legend_y - 5), (legend_x + 25, legend_y - 5), colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, text, (legend_x + 32, legend_y), font, 0.45, black, 1, cv2.LINE_AA)
    ok, buffer = cv2.imencode(".png", canvas)
    if not ok:
        raise OSError("PNG encoding of the per-frame curve failed")
    return buffer.tobytes()


def _render_matplotlib(
    centres: np.ndarray, series: Sequence[np.ndarray], labels: Sequence[str], title: str
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9.6, 5.6), dpi=100)
    for values, label in zip(series, labels):
        axes.plot(centres, values, marker="o", markersize=3, label=label)
    axes.set_xlim(0, 1)
    axes.set_ylim(*_y_range(series))
    axes.set_xlabel("normalised time in video")
    axes.set_ylabel("J&F")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def save_per_frame_curves(
    runs: Sequence[tuple[str, Sequence[ObjectScores]]],
    out_path: str | Path,
    bins: int = 20,
    title: str = "Mean J&F over normalised time",
    backend: str = "auto",
) -> str:
    """Plot one curve per ``(name, objects)`` run to ``out_path`` (PNG) and its values to a CSV beside it.

    ``backend`` is "auto" (matplotlib if installed, else OpenCV), "matplotlib" or "opencv";
    returns the backend used.
    """
    if backend == "auto":
        backend = "matplotlib" if matplotlib_available() else "opencv"
    if backend not in ("matplotlib", "opencv"):
        raise ValueError(f"unknown plot backend {backend!r}")
    labels = _unique_labels([name for name, _ in runs])
    curves = [per_frame_curve(objects, bins) for _, objects in runs]
    centres = curves[0][0] if curves else (np.arange(bins) + 0.5) / bins
    series = [means for _, means, _ in curves]
    render = _render_matplotlib if backend == "matplotlib" else _render_opencv
    out = Path(out_path)
    atomic_write_bytes(out, render(centres, series, labels, title))
    rows = [[f"{t:.4f}", *(format_float(s[i], 4) for s in series)] for i, t in enumerate(centres)]
    write_csv(out.with_suffix(".csv"), ["t", *labels], rows)
    return backend
