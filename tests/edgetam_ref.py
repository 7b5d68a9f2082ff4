"""Locate (or fetch) the official EdgeTAM code, ``edgetam-dimos==1.0.1`` from PyPI, for parity tests.

The wheel holds Meta's EdgeTAM package, which imports as ``sam2`` like ours, so it only ever runs in
a subprocess (:func:`upstream_ref.run_both` with ``root=edgetam_root()``). Where it comes from, in
order:

1. ``EDGETAM_REF_SRC``: a folder holding the unpacked wheel (``sam2/`` next to its dist-info);
2. ``$SAM2_UPSTREAM_CACHE/edgetam_dimos-1.0.1`` (the cache ``upstream_ref`` uses);
3. ``pip download`` of the pinned wheel into that cache, checked against its sha256 and unpacked
   into a temporary folder that is then renamed.

The official trunk comes from timm, so timm must be importable too. When either is missing the
test is skipped, except under ``CI=true`` where it fails (``extras.unavailable``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from extras import unavailable
from upstream_ref import DOWNLOAD_TIMEOUT_S, cache_dir

VERSION = "1.0.1"
WHEEL_NAME = f"edgetam_dimos-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "cddc8aef9c6842205f2092d50f8b1cefcc87ad82a2b17d74edb1add57d5f5030"
_FOUND: dict[str, Path | str] = {}


class EdgeTAMUnavailable(RuntimeError):
    """The pinned EdgeTAM wheel could not be located, downloaded or unpacked."""


def _is_root(root: Path) -> bool:
    """True when ``root`` is the unpacked ``edgetam-dimos==1.0.1`` wheel."""
    meta = root / f"edgetam_dimos-{VERSION}.dist-info" / "METADATA"
    return (root / "sam2" / "modeling" / "perceiver.py").is_file() and meta.is_file()


def _fetch_wheel(cache: Path) -> Path:
    target = cache / WHEEL_NAME
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == WHEEL_SHA256:
        return target
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        cmd += ["--dest", tmp, f"edgetam-dimos=={VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
        fetched = Path(tmp) / WHEEL_NAME
        if proc.returncode != 0 or not fetched.is_file():
            raise EdgeTAMUnavailable(f"pip download failed: {proc.stderr.strip()[-800:]}")
        digest = hashlib.sha256(fetched.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise EdgeTAMUnavailable(f"{WHEEL_NAME} sha256 {digest} != pinned {WHEEL_SHA256}")
        os.replace(fetched, target)
    return target


def _unpack(wheel: Path, final: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp / "root")
        try:
            os.rename(tmp / "root", final)
        except OSError:
            if not _is_root(final):  # lost a race only if the winner is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _is_root(final):
        raise EdgeTAMUnavailable(f"unpacked tree at {final} is not edgetam-dimos=={VERSION}")
    return final


def _locate() -> Path:
    explicit = os.environ.get("EDGETAM_REF_SRC")
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not _is_root(root):
            raise EdgeTAMUnavailable(f"EDGETAM_REF_SRC={root} is not an unpacked edgetam-dimos=={VERSION}")
        return root
    cache = cache_dir()
    final = cache / WHEEL_NAME.split("-py3")[0]
    if _is_root(final):
        return final.resolve()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return _unpack(_fetch_wheel(cache), final).resolve()
    except (OSError, zipfile.BadZipFile, subprocess.TimeoutExpired) as err:
        raise EdgeTAMUnavailable(f"{type(err).__name__}: {err}") from err


def edgetam_root() -> Path:
    """Import root of the official EdgeTAM code; skip the test (fail under CI) when unavailable."""
    if importlib.util.find_spec("timm") is None:
        unavailable("EdgeTAM needs timm: pip install -e '.[edgetam]'")
    if "root" not in _FOUND and "error" not in _FOUND:
        try:
            _FOUND["root"] = _locate()
        except EdgeTAMUnavailable as err:
            _FOUND["error"] = str(err)
    if "root" not in _FOUND:
        unavailable(f"official EdgeTAM (edgetam-dimos=={VERSION}) unavailable: {_FOUND['error']}")
    return Path(_FOUND["root"])
