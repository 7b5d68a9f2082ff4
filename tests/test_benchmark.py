"""The propagation benchmark runs, shows SAM2Long's session memory flat in the video length, and
splits each frame's time into stages that add up to the total.

No timing is asserted (speed numbers belong in the benchmark's printout), only what is held and that
the time split is consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "propagation.py"
NETWORK_STAGES = ("enc_ms", "mem_attn_ms", "decoder_ms", "mem_enc_ms")


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[list[str], dict]:
    """Run the benchmark tiny (128 px, 1 object, CPU); its printed lines and its JSON."""
    out_json = tmp_path / f"{name}.json"
    cmd = [sys.executable, str(SCRIPT), "--image_size", "128", "--objects", "1", "--device", "cpu"]
    cmd += ["--json", str(out_json), *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    return out.splitlines(), json.loads(out_json.read_text())


def _check_stages(row: dict) -> None:
    """Every stage column is there and non-negative; the network stages ran; they sum to s/frame."""
    for key in (*NETWORK_STAGES, "tree_host_ms"):
        assert row[key] >= 0, (key, row)
    assert all(row[key] > 0 for key in NETWORK_STAGES), row  # every stage runs on tracked frames
    total_ms = sum(row[key] for key in (*NETWORK_STAGES, "tree_host_ms"))
    assert abs(total_ms - 1000 * row["s_per_frame"]) < 0.01, row
    assert row["fps"] > 0 and row["peak_mb"] > 0


def test_benchmark_rows_stage_split_and_sam2long_state_is_flat(tmp_path: Path) -> None:
    lines, data = _run(tmp_path, "fp32", "--frames", "3,9", "--modes", "sam2,p2", "--dtypes", "float32")
    rows = data["rows"]
    table = [line.split() for line in lines if not line.startswith("#")]
    assert table[0][:3] == ["mode", "dtype", "frames"]
    assert [(cells[0], int(cells[2])) for cells in table[1:]] == [(r["mode"], r["frames"]) for r in rows]
    header = data["header"]
    assert {"date", "command", "cpu", "cpu_bf16", "torch", "threads"} <= set(header)
    state = {}
    for row in rows:
        assert row["dtype"] == "float32" and row["dtype_requested"] == "float32"
        _check_stages(row)
        state[(row["mode"], row["frames"])] = row["state_mb"]
    assert set(state) == {("sam2", 3), ("sam2", 9), ("p2", 3), ("p2", 9)}
    assert state[("sam2", 9)] > state[("sam2", 3)], "SAM 2 keeps every frame's memory"
    assert state[("p2", 9)] == state[("p2", 3)], "SAM2Long without stored outputs must not grow"


def test_benchmark_bfloat16_case_reports_its_dtype_and_stage_split(tmp_path: Path) -> None:
    lines, data = _run(tmp_path, "bf16", "--frames", "3", "--modes", "p2", "--dtypes", "bfloat16")
    (row,) = data["rows"]
    assert row["dtype"] == "bfloat16" and row["mode"] == "p2" and row["frames"] == 3
    assert lines[-1].split()[:3] == ["p2", "bf16", "3"]
    _check_stages(row)
