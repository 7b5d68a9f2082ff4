"""One rule for tests that need something optional (an extra, a browser, the upstream reference).

Where it is missing the test is skipped with the reason, except under ``CI=true``: ``.ci/run``
installs everything, so there a missing piece is a failure, never a silent skip.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to anything but an explicit false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI fail with it."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, install: str) -> None:
    """Skip (fail under CI) unless ``module`` can be imported; ``install`` says how to get it."""
    if importlib.util.find_spec(module) is None:
        unavailable(f"needs {module}: {install}")
