"""Locate (or fetch) the official EfficientTAM code and run drivers against it in a subprocess.

The reference is the ``efficient_track_anything`` package of github.com/yformer/EfficientTAM at a
pinned commit: the code the official checkpoints and configs (``configs/efficienttam/*.yaml``)
are published with. The PyPI wheel ``efficient-track-anything==1.0`` is NOT used: it predates the
rename (it installs a package called ``sam2``, built on SAM 2.0's predictor) and ships no configs.

Where the reference comes from, in order:

1. ``EFFICIENTTAM_REF_SRC``: a folder holding ``efficient_track_anything/`` (a checkout or an
   extracted archive of the pinned commit);
2. ``$SAM2_UPSTREAM_CACHE/EfficientTAM-<commit>`` (same cache root as :mod:`upstream_ref`);
3. the GitHub source archive of the pinned commit, extracted once (atomically) into that cache.

Whatever the source, the package's ``.py`` and ``.yaml`` files must match :data:`TREE_SHA256`, a
digest over their paths and contents (archive bytes from GitHub are not guaranteed stable; the
files are). Unavailable -> the test is skipped, except under ``CI=true`` where it fails.
The child imports ``efficient_track_anything`` only, so our ``sam2`` never mixes with it; the
shared driver functions pick the side with ``official()``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from extras import unavailable
from upstream_ref import cache_dir, run_both_with

COMMIT = "abcd061ebd3cc6e7527d152d75b890126aaa53f6"
ARCHIVE_URL = f"https://github.com/yformer/EfficientTAM/archive/{COMMIT}.tar.gz"
TREE_SHA256 = "c8c576c1aa2171ce3af6ed45114a6bfd14b8b023d5a6524dcfaf12ffeb3a7f9f"
PACKAGE = "efficient_track_anything"
OFFICIAL_ENV = "SAM2LONG_TESTS_EFFICIENTTAM_OFFICIAL"
DOWNLOAD_TIMEOUT_S = 300


class ReferenceUnavailable(RuntimeError):
    """The pinned EfficientTAM code could not be located, downloaded or verified."""


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


def _download(cache: Path) -> Path:
    final = cache / f"EfficientTAM-{COMMIT}"
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".efficienttam-"))
    try:
        archive = tmp / "src.tar.gz"
        with urllib.request.urlopen(ARCHIVE_URL, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            archive.write_bytes(resp.read())
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if f"/{PACKAGE}/" in f"/{m.name}" or m.isdir()]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        extracted = tmp / f"EfficientTAM-{COMMIT}"
        if not _verified(extracted):
            raise ReferenceUnavailable(f"{ARCHIVE_URL} does not hold the pinned files (digest mismatch)")
        try:
            os.rename(extracted, final)
        except OSError:
            if not _verified(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _locate() -> Path:
    explicit = os.environ.get("EFFICIENTTAM_REF_SRC")
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not _verified(root):
            raise ReferenceUnavailable(f"EFFICIENTTAM_REF_SRC={root} is not EfficientTAM@{COMMIT[:7]}")
        return root
    cache = cache_dir()
    cached = cache / f"EfficientTAM-{COMMIT}"
    if _verified(cached):
        return cached.resolve()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return _download(cache).resolve()
    except (OSError, tarfile.TarError, ValueError) as err:
        raise ReferenceUnavailable(f"{type(err).__name__}: {err}") from err


_ROOT: list[Path | str] = []


def require_reference() -> Path:
    """Root holding the pinned ``efficient_track_anything``: skip when unavailable (fail under CI)."""
    if not _ROOT:
        try:
            _ROOT.append(_locate())
        except ReferenceUnavailable as err:
            _ROOT.append(str(err))
    if isinstance(_ROOT[0], str):
        unavailable(f"official EfficientTAM@{COMMIT[:7]} unavailable: {_ROOT[0]}")
    return _ROOT[0]


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
