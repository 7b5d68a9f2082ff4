"""Locate the official EfficientTAM code and run drivers against it in a subprocess.

The reference is the ``efficient_track_anything`` package of github.com/yformer/EfficientTAM at a
pinned commit: the code the official checkpoints and configs (``configs/efficienttam/*.yaml``)
are published with. The PyPI wheel ``efficient-track-anything==1.0`` is NOT used: it predates the
rename (it installs a package called ``sam2``, built on SAM 2.0's predictor) and ships no configs.

The reference lives on GitHub only, which CI cannot reach. So CI compares against golden files
(``tests/golden/efficienttam/``) that ``tools/golden/efficienttam.py`` records by running this
code; nothing here downloads. The reference is used only where ``EFFICIENTTAM_REF_SRC`` names a
folder holding ``efficient_track_anything/`` (a checkout or extracted archive of the pinned
commit, outside this repository): by that generator and by the optional live tests. Its ``.py``
and ``.yaml`` files must match :data:`TREE_SHA256`, a digest over their paths and contents.

The child imports ``efficient_track_anything`` only, so our ``sam2`` never mixes with it; the
shared driver functions pick the side with ``official()``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from upstream_ref import UpstreamJob, driver_script, run_both_with

COMMIT = "abcd061ebd3cc6e7527d152d75b890126aaa53f6"
REPO_URL = "https://github.com/yformer/EfficientTAM"
TREE_SHA256 = "c8c576c1aa2171ce3af6ed45114a6bfd14b8b023d5a6524dcfaf12ffeb3a7f9f"
PACKAGE = "efficient_track_anything"
OFFICIAL_ENV = "SAM2LONG_TESTS_EFFICIENTTAM_OFFICIAL"
REF_SRC_ENV = "EFFICIENTTAM_REF_SRC"


class ReferenceUnavailable(RuntimeError):
    """The pinned EfficientTAM code could not be located or verified."""


def tree_digest(root: Path) -> str:
    """sha256 over (relative path, sha256 of contents) of the package's ``.py``/``.yaml`` files."""
    h = hashlib.sha256()
    files = sorted(p for p in (root / PACKAGE).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml"))
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def _verified(root: Path) -> bool:
    return (root / PACKAGE / "__init__.py").is_file() and tree_digest(root) == TREE_SHA256


def locate(src: str | Path | None = None) -> Path:
    """Verified root of the pinned reference at ``src`` (default ``$EFFICIENTTAM_REF_SRC``)."""
    src = os.environ.get(REF_SRC_ENV) if src is None else src
    if not src:
        raise ReferenceUnavailable(
            f"{REF_SRC_ENV} is not set (check out {REPO_URL} at {COMMIT} outside this repository)"
        )
    root = Path(src).expanduser().resolve()
    if not _verified(root):
        raise ReferenceUnavailable(f"{root} does not hold {PACKAGE} of EfficientTAM@{COMMIT} (tree digest mismatch)")
    return root


def require_reference() -> Path:
    """Root of the reference for a live test. Without ``EFFICIENTTAM_REF_SRC`` the test is
    skipped, under CI too: CI's parity for this GitHub-only reference is the golden files. Set
    but wrong fails."""
    if not os.environ.get(REF_SRC_ENV):
        pytest.skip(f"live EfficientTAM reference: {REF_SRC_ENV} not set (the golden-file tests cover parity)")
    try:
        return locate()
    except ReferenceUnavailable as err:
        pytest.fail(str(err), pytrace=False)


def official() -> bool:
    """True inside the reference subprocess (for the shared drivers)."""
    return os.environ.get(OFFICIAL_ENV) == "1"


_PRELUDE = f"""\
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

import {PACKAGE}

_ROOT = Path(sys.argv[3]).resolve()
assert Path({PACKAGE}.__file__).resolve().is_relative_to(_ROOT), (
    f"expected {PACKAGE} under {{_ROOT}}, imported {{{PACKAGE}.__file__}}"
)
torch.set_num_threads(int(sys.argv[4]))
"""


def run_both(
    driver: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any], timeout: float = 900.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ours, official)`` results of the self-contained ``driver`` on the same ``args``."""
    root = require_reference()
    return run_both_with(driver, args, timeout=timeout, root=root, prelude=_PRELUDE, env={OFFICIAL_ENV: "1"})


def run_official(
    driver: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any], root: Path, threads: int, timeout: float = 1800.0
) -> dict[str, Any]:
    """The reference's result of ``driver`` on ``args`` (the subprocess :func:`run_both` starts)."""
    job = UpstreamJob(driver_script(driver), args, threads=threads, timeout=timeout, root=root, prelude=_PRELUDE, env={OFFICIAL_ENV: "1"})
    return job.result()
