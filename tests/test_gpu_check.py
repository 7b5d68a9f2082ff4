"""``benchmarks/gpu_check.sh --device cpu --quick``: every section of the table is there, with numbers.

On CPU in float32 our SAM 2 is bit-exact with upstream ``sam2==1.1.0``, so the parity rows must say
IoU 1 and no pixel differing; the CUDA test subset must say it was skipped for want of CUDA. The
upstream sdist is needed (skipped locally without it, a failure under ``CI=true``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from upstream_ref import require_upstream

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
SPEED_MODES = ("SAM 2 (ours)", "SAM 2 (upstream 1.1.0)", "SAM2Long P=1", "SAM2Long P=3")


def test_quick_cpu_check_prints_every_section(tmp_path: Path) -> None:
    require_upstream()
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = ["bash", str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"

    table = (out / "gpu_check.md").read_text()
    assert table.strip() in proc.stdout, "the script must print the table it wrote"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["meta"]["finished"] and report["meta"]["env"]["torch"]
    rows = report["rows"]
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(lines) == len(rows) + 1, "one table line per row, plus the column names"
    sections = {row["section"] for row in rows}
    assert sections == {"CUDA tests", "parity vs upstream", "speed", "long video"}
    assert all(row["status"] == "ok" for row in rows if row["section"] != "CUDA tests"), rows

    (tests_row,) = [r for r in rows if r["section"] == "CUDA tests"]
    assert tests_row["status"] == "skipped: no CUDA"
    assert "skipped: no CUDA" in table

    parity = {r["dtype"]: r for r in rows if r["section"] == "parity vs upstream"}
    assert set(parity) == {"fp32", "bf16 autocast"}
    for row in parity.values():
        assert row["frames"] == len(row["data"]["iou"]) == len(row["data"]["px"]) >= 4
        assert row["data"]["frames_with_an_empty_mask"] == 0, "empty masks compare trivially"
        assert 0.0 < row["iou_min"] <= row["iou_mean"] <= 1.0 and row["px_total"] >= row["px_max"] >= 0
    fp32 = parity["fp32"]
    assert fp32["iou_min"] == 1.0 and fp32["px_total"] == 0, fp32["notes"]
    assert "| 1.0000 / 1.0000 | 0 / 0 |" in next(line for line in lines if "| fp32 |" in line)
    drift = parity["bf16 autocast"]["data"]["bf16_vs_fp32_ours"]
    assert sum(drift["px"]) > 0, "the bf16 rows must really run in bf16"

    speed = [r for r in rows if r["section"] == "speed"]
    assert sorted(r["case"] for r in speed) == sorted(
        f"{mode} 2.1-T 256 px, {k} obj" for mode in SPEED_MODES for k in (1, 3)
    )
    frames = {r["frames"] for r in speed}
    assert len(frames) == 1 and frames.pop() >= 4, "every speed case runs the same frames"
    for row in speed:
        assert row["fps"] > 0 and row["peak_mb"] > 0, row

    long_rows = [r for r in rows if r["section"] == "long video"]
    assert [r["frames"] for r in long_rows] == [10, 40]
    assert all(r["peak_mb"] > 0 for r in long_rows)
    assert "peak at 40 / at 10 frames = " in long_rows[1]["notes"]
