"""Locate (or fetch) the upstream SAM 2 reference and run code against it in a subprocess.

Our package and the official one are both importable as ``sam2``, so upstream code never runs
inside the pytest process. Each call spawns a fresh interpreter whose ``PYTHONPATH`` is the
extracted PyPI sdist of ``sam2==1.1.0`` and whose working directory is a scratch folder outside
this repository; inputs and outputs cross the boundary as ``.pt`` files.

Where the reference comes from, in order:

1. ``SAM2_UPSTREAM_SRC``: an already extracted sdist root (no network needed);
2. ``$SAM2_UPSTREAM_CACHE/sam2-1.1.0`` (default cache ``~/.cache/sam2long-tests/upstream``);
3. ``pip download`` of the pinned sdist into that cache, checked against its sha256 and
   extracted once (into a temporary folder that is then renamed, so concurrent test
   processes never see a half-extracted tree).

If none works the calling test is skipped, except under ``CI=true`` where it fails: parity
must never silently disappear from CI.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from extras import unavailable

UPSTREAM_VERSION = "1.1.0"
SDIST_NAME = f"sam2-{UPSTREAM_VERSION}.tar.gz"
SDIST_SHA256 = "7e0ea252d43c10d853e3acfce0b5770ac683c30481bd6de311300e9d44f45b74"
PYPI_JSON_URL = f"https://pypi.org/pypi/sam2/{UPSTREAM_VERSION}/json"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path.home() / ".cache" / "sam2long-tests" / "upstream"
DOWNLOAD_TIMEOUT_S = 300


class UpstreamUnavailable(RuntimeError):
    """The pinned upstream sdist could not be located, downloaded or extracted."""


@dataclass
class _Lookup:
    """Outcome of the (single, per process) attempt to locate the reference."""

    root: Path | None = None
    error: str | None = None
    done: bool = False


_LOOKUP = _Lookup()


def cache_dir() -> Path:
    """Folder holding the downloaded sdist and its extracted tree."""
    return Path(os.environ.get("SAM2_UPSTREAM_CACHE", str(DEFAULT_CACHE))).expanduser()


def _is_upstream_root(root: Path) -> bool:
    """True when ``root`` is an extracted ``sam2==1.1.0`` sdist."""
    pkg_info = root / "PKG-INFO"
    if not (root / "sam2" / "build_sam.py").is_file() or not pkg_info.is_file():
        return False
    return f"Version: {UPSTREAM_VERSION}" in pkg_info.read_text(encoding="utf-8").splitlines()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip_download(dest: Path) -> Path:
    """Fetch the sdist with pip into ``dest``; build isolation is off so no torch wheel is pulled."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-build-isolation",
        "--no-binary",
        "sam2",
        "--dest",
        str(dest),
        f"sam2=={UPSTREAM_VERSION}",
    ]
    env = {**os.environ, "SAM2_BUILD_CUDA": "0"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=DOWNLOAD_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise UpstreamUnavailable(f"pip download failed: {proc.stderr.strip()[-800:]}")
    return dest / SDIST_NAME


def _direct_download(dest: Path) -> Path:
    """Fallback when pip cannot prepare the sdist metadata: fetch the file PyPI lists."""
    with urllib.request.urlopen(PYPI_JSON_URL, timeout=60) as resp:
        release = json.load(resp)
    urls = [u["url"] for u in release["urls"] if u["filename"] == SDIST_NAME]
    if not urls:
        raise UpstreamUnavailable(f"{SDIST_NAME} is not listed at {PYPI_JSON_URL}")
    target = dest / SDIST_NAME
    with urllib.request.urlopen(urls[0], timeout=DOWNLOAD_TIMEOUT_S) as resp:
        target.write_bytes(resp.read())
    return target


def _fetch_sdist(cache: Path) -> Path:
    """Return the verified sdist in ``cache``, downloading it first if needed."""
    target = cache / SDIST_NAME
    if target.is_file() and _sha256(target) == SDIST_SHA256:
        return target
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        try:
            fetched = _pip_download(Path(tmp))
        except (UpstreamUnavailable, OSError, subprocess.TimeoutExpired) as pip_err:
            try:
                fetched = _direct_download(Path(tmp))
            except (UpstreamUnavailable, OSError, ValueError, KeyError) as url_err:
                raise UpstreamUnavailable(f"{pip_err}; direct download: {url_err}") from url_err
        digest = _sha256(fetched)
        if digest != SDIST_SHA256:
            raise UpstreamUnavailable(f"{SDIST_NAME} sha256 {digest} != pinned {SDIST_SHA256}")
        os.replace(fetched, target)
    return target


def _extract(sdist: Path, cache: Path) -> Path:
    """Extract ``sdist`` into ``cache`` atomically and return the tree's root."""
    final = cache / SDIST_NAME.removesuffix(".tar.gz")
    if _is_upstream_root(final):
        return final
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        try:
            os.rename(tmp / final.name, final)
        except OSError:
            if not _is_upstream_root(final):  # lost a race only if the winner is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _is_upstream_root(final):
        raise UpstreamUnavailable(f"extracted tree at {final} is not sam2=={UPSTREAM_VERSION}")
    return final


def _locate() -> Path:
    explicit = os.environ.get("SAM2_UPSTREAM_SRC")
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not _is_upstream_root(root):
            raise UpstreamUnavailable(f"SAM2_UPSTREAM_SRC={root} is not a sam2=={UPSTREAM_VERSION} sdist")
        return root
    cache = cache_dir()
    cached = cache / SDIST_NAME.removesuffix(".tar.gz")
    if _is_upstream_root(cached):
        return cached.resolve()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return _extract(_fetch_sdist(cache), cache).resolve()
    except (OSError, tarfile.TarError, subprocess.TimeoutExpired) as err:
        raise UpstreamUnavailable(f"{type(err).__name__}: {err}") from err


def upstream_root() -> Path:
    """Root of the extracted upstream sdist; the lookup runs once per process."""
    if not _LOOKUP.done:
        try:
            _LOOKUP.root = _locate()
        except UpstreamUnavailable as err:
            _LOOKUP.error = str(err)
        _LOOKUP.done = True
    if _LOOKUP.root is None:
        raise UpstreamUnavailable(_LOOKUP.error or "unknown error")
    return _LOOKUP.root


def require_upstream() -> Path:
    """Upstream root for a test: skip when unavailable, but fail under ``CI=true``."""
    try:
        return upstream_root()
    except UpstreamUnavailable as err:
        unavailable(f"upstream sam2=={UPSTREAM_VERSION} reference unavailable: {err}")


def assert_ours_imported() -> None:
    """Fail unless ``sam2`` in this process is the package from this repository."""
    import sam2

    origin = Path(sam2.__file__).resolve()
    assert origin.is_relative_to(REPO_ROOT / "sam2"), f"tests imported a foreign sam2 from {origin}"


_PRELUDE = """\
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

import sam2

_UPSTREAM_ROOT = Path(sys.argv[3]).resolve()
assert Path(sam2.__file__).resolve().is_relative_to(_UPSTREAM_ROOT), (
    f"expected upstream sam2 under {_UPSTREAM_ROOT}, imported {sam2.__file__}"
)
torch.set_num_threads(int(sys.argv[4]))
"""

_EPILOGUE = """
if __name__ == "__main__":
    _result = main(torch.load(sys.argv[1], weights_only=False))
    torch.save(_result, sys.argv[2])
"""


def driver_script(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> str:
    """Source for :func:`run_upstream` that runs the self-contained function ``fn`` as ``main``.

    Test modules write each scenario once, as a function importing ``sam2`` inside its body;
    calling it in-process runs our package, shipping its source here runs upstream's.
    """
    return f"{inspect.getsource(fn)}\nmain = {fn.__name__}\n"


class UpstreamJob:
    """An upstream driver running in a subprocess; :meth:`result` waits for and loads its output."""

    def __init__(
        self,
        script: str,
        args: dict[str, Any],
        threads: int,
        timeout: float,
        root: Path | None = None,
        prelude: str = _PRELUDE,
        env: dict[str, str] | None = None,
    ) -> None:
        """``root`` (default: the upstream sam2 sdist) goes on the child's ``PYTHONPATH``;
        ``prelude`` is the driver's header (it gets ``sys.argv[3]`` = root, ``[4]`` = threads);
        ``env`` adds variables to the child's environment."""
        root = require_upstream() if root is None else root
        self._tmp = tempfile.TemporaryDirectory(prefix="sam2-upstream-")
        self.work = Path(self._tmp.name).resolve()
        assert not self.work.is_relative_to(REPO_ROOT), f"scratch dir {self.work} is inside the repo"
        self.timeout = timeout
        driver = self.work / "driver.py"
        driver.write_text(prelude + "\n" + textwrap.dedent(script) + "\n" + _EPILOGUE)
        torch.save(args, self.work / "in.pt")
        env = {**os.environ, **(env or {}), "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
        env.pop("PYTHONHOME", None)
        cmd = [
            sys.executable,
            str(driver),
            str(self.work / "in.pt"),
            str(self.work / "out.pt"),
            str(root),
            str(threads),
        ]
        # Output goes to a file: a chatty child (tqdm) must never block on a full pipe.
        self._log = open(self.work / "log.txt", "w+b")
        self._proc = subprocess.Popen(cmd, cwd=self.work, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def result(self) -> dict[str, Any]:
        """Wait for the driver and return its ``main`` result; fail the test if it crashed."""
        try:
            try:
                returncode = self._proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                pytest.fail(f"upstream driver timed out after {self.timeout:.0f} s")
            if returncode != 0:
                self._log.seek(0)
                log = self._log.read().decode(errors="replace")
                pytest.fail(f"upstream driver failed (rc={returncode}):\n{log[-4000:]}")
            return torch.load(self.work / "out.pt", weights_only=False)
        finally:
            self._log.close()
            self._tmp.cleanup()

    def cancel(self) -> None:
        """Stop the driver and remove its scratch folder."""
        self._proc.kill()
        self._proc.wait()
        self._log.close()
        self._tmp.cleanup()


def run_upstream(script: str, args: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """Run ``script`` under upstream ``sam2`` and return what its ``main(args)`` returns.

    ``script`` is Python source defining ``main(args: dict) -> dict``; ``args`` and the result
    must be ``torch.save``-able (tensors, numbers, strings, lists, dicts).
    """
    return UpstreamJob(script, args, threads=torch.get_num_threads(), timeout=timeout).result()


def run_both(
    driver: Callable[[dict[str, Any]], dict[str, Any]],
    args: dict[str, Any],
    timeout: float = 900.0,
    root: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ours, upstream)`` results of the self-contained ``driver`` on the same ``args``.

    Upstream runs in its subprocess while ours runs here; the thread budget of this process is
    split between the two for that time, so both sides together use no more cores than one.
    ``root`` selects another reference than upstream sam2 (see :class:`UpstreamJob`).
    """
    return run_both_with(driver, args, timeout=timeout, root=root)


def run_both_with(
    driver: Callable[[dict[str, Any]], dict[str, Any]], args: dict[str, Any], timeout: float = 900.0, **reference: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`run_both` against another reference: ``reference`` goes to :class:`UpstreamJob`
    (``root``, ``prelude``, ``env``)."""
    assert_ours_imported()
    threads = torch.get_num_threads()
    job = UpstreamJob(driver_script(driver), args, threads=max(1, threads // 2), timeout=timeout, **reference)
    torch.set_num_threads(max(1, threads - threads // 2))
    try:
        with torch.no_grad():
            ours = driver(args)
    except BaseException:
        job.cancel()
        raise
    finally:
        torch.set_num_threads(threads)
    return ours, job.result()


def max_abs_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest absolute elementwise difference, after checking shapes agree."""
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != upstream {tuple(theirs.shape)}"
    if ours.numel() == 0:
        return 0.0
    return (ours.double() - theirs.double()).abs().max().item()


def mask_iou(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != upstream {tuple(theirs.shape)}"
    union = (ours | theirs).sum().item()
    return 1.0 if union == 0 else (ours & theirs).sum().item() / union
