"""The propagation benchmark runs and shows SAM2Long's session memory flat in the video length.

No timing is asserted (speed numbers belong in the benchmark's printout), only what is held.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "propagation.py"


def test_benchmark_prints_rows_and_sam2long_state_is_flat() -> None:
    cmd = [sys.executable, str(SCRIPT), "--image_size", "128", "--frames", "3,9", "--objects", "1"]
    cmd += ["--modes", "sam2,p2", "--device", "cpu"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = {}
    for line in out.splitlines()[2:]:
        mode, frames, seconds, fps, peak_mb, state_mb, _ = line.split()
        rows[(mode, int(frames))] = float(state_mb)
        assert float(seconds) > 0 and float(fps) > 0 and float(peak_mb) > 0
    assert set(rows) == {("sam2", 3), ("sam2", 9), ("p2", 3), ("p2", 9)}
    assert rows[("sam2", 9)] > rows[("sam2", 3)], "SAM 2 keeps every frame's memory"
    assert rows[("p2", 9)] == rows[("p2", 3)], "SAM2Long without stored outputs must not grow"
