"""The rule for optional test dependencies (``tests/extras.py``): skip with the reason, fail under CI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci, outcome", [("", "1 skipped"), ("false", "1 skipped"), ("true", "1 error")])
def test_a_missing_extra_skips_with_its_reason_and_fails_under_ci(tmp_path: Path, ci: str, outcome: str) -> None:
    (tmp_path / "test_needs_extra.py").write_text(
        textwrap.dedent(
            """
            from extras import require

            require("no_such_module_for_the_rule", "pip install -e '.[imaginary]'")


            def test_uses_it():
                pass
            """
        )
    )
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert outcome in run.stdout.splitlines()[-1], run.stdout
    assert "needs no_such_module_for_the_rule: pip install -e '.[imaginary]'" in run.stdout
