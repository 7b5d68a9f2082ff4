"""The official SAM 2 / SAM 2.1 checkpoints by name, fetched on first use into a local cache.

``build_model_by_name("sam2.1-large")`` is the short way from a name to a predictor: the name gives
the hydra config and the official URL, and the checkpoint is downloaded once into
``<cache>/checkpoints/`` (``$SAM2LONG_CACHE`` or ``~/.cache/sam2long``), then reused.

Downloads are resumable (an interrupted transfer leaves ``<file>.part``, continued with an HTTP
``Range`` request next time), checked against the registry's sha256 and moved to their final name
only after the check (``os.replace``), so a file under the final name is always complete. Only the
standard library talks to the network (``urllib.request``, which honours the usual proxy variables).

Environment: ``SAM2LONG_CACHE`` (cache folder), ``SAM2LONG_OFFLINE=1`` (never use the network),
``SAM2LONG_BASE_URL`` (replaces ``https://dl.fbaipublicfiles.com/segment_anything_2``, like the
``SAM2_BASE_URL`` of ``checkpoints/download_ckpts.sh``).

This module needs no torch: the builders are imported only by :func:`build_model_by_name`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Union

from tqdm import tqdm

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2"
ENV_CACHE = "SAM2LONG_CACHE"
ENV_OFFLINE = "SAM2LONG_OFFLINE"
ENV_BASE_URL = "SAM2LONG_BASE_URL"

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_SCRIPT_HINT = "checkpoints/download_ckpts.sh"


class CheckpointUnavailableError(RuntimeError):
    """The checkpoint is not in the cache and cannot be fetched (offline mode or a network failure)."""


class ChecksumMismatchError(RuntimeError):
    """A checkpoint's bytes are not the expected ones (sha256 or size); the bad file was deleted."""


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model: name, hydra config, official URL, file name and what to verify.

    ``sha256`` (lower-case hex) and ``size_bytes`` are ``None`` where no public value is known;
    then the size is checked if known, and the digest of the downloaded file is recorded in
    ``<file>.sha256`` so that later loads detect corruption.
    """

    name: str
    config: str
    url: str
    filename: str
    sha256: Optional[str] = None
    size_bytes: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelSpec.name must not be empty")
        if not self.filename or Path(self.filename).name != self.filename or self.filename in (".", ".."):
            raise ValueError(f"ModelSpec {self.name!r}: filename {self.filename!r} must be a plain file name")
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if not _SHA256_RE.fullmatch(digest):
                raise ValueError(f"ModelSpec {self.name!r}: sha256 {self.sha256!r} is not 64 hex digits")
            object.__setattr__(self, "sha256", digest)
        if self.size_bytes is not None and (isinstance(self.size_bytes, bool) or self.size_bytes <= 0):
            raise ValueError(
                f"ModelSpec {self.name!r}: size_bytes {self.size_bytes!r} must be a positive int"
            )


EFFICIENTTAM_BASE_URL = "https://huggingface.co/yunyangx/efficient-track-anything/resolve/main"


def _official(name: str, config: str, release: str, filename: str, sha256: str, size_bytes: int) -> ModelSpec:
    return ModelSpec(name, config, f"{OFFICIAL_BASE_URL}/{release}/{filename}", filename, sha256, size_bytes)


# Meta publishes no checksums. The sha256 values are stated, for these exact official URLs, in
# computational-cell-analytics/micro-sam (micro_sam/v2/util.py, the HASHES table it passes to
# pooch as known_hash; its older revisions also list the SAM 2 ones) and, for the four SAM 2 files,
# in mazurowski-lab/SlicerSegmentWithSAM (SegmentWithSAM/SegmentWithSAM.py, "SHA256:..." checksums
# of its downloads); other public projects pin the same digests. The sizes are stated next to the
# same digests in other public repositories and READMEs (found by exact-string search of each
# digest); sam2_hiera_base_plus.pt's size comes from one public inventory only. Where a sha256 is
# known it is the check that decides; the size then only sizes the progress bar.
_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _official(
            "sam2.1-tiny",
            "configs/sam2.1/sam2.1_hiera_t.yaml",
            "092824",
            "sam2.1_hiera_tiny.pt",
            "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
            156_008_466,
        ),
        _official(
            "sam2.1-small",
            "configs/sam2.1/sam2.1_hiera_s.yaml",
            "092824",
            "sam2.1_hiera_small.pt",
            "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
            184_416_285,
        ),
        _official(
            "sam2.1-base-plus",
            "configs/sam2.1/sam2.1_hiera_b+.yaml",
            "092824",
            "sam2.1_hiera_base_plus.pt",
            "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
            323_606_802,
        ),
        _official(
            "sam2.1-large",
            "configs/sam2.1/sam2.1_hiera_l.yaml",
            "092824",
            "sam2.1_hiera_large.pt",
            "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
            898_083_611,
        ),
        _official(
            "sam2-tiny",
            "configs/sam2/sam2_hiera_t.yaml",
            "072824",
            "sam2_hiera_tiny.pt",
            "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125",
            155_906_050,
        ),
        _official(
            "sam2-small",
            "configs/sam2/sam2_hiera_s.yaml",
            "072824",
            "sam2_hiera_small.pt",
            "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3",
            184_309_650,
        ),
        _official(
            "sam2-base-plus",
            "configs/sam2/sam2_hiera_b+.yaml",
            "072824",
            "sam2_hiera_base_plus.pt",
            "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071",
            323_493_298,
        ),
        _official(
            "sam2-large",
            "configs/sam2/sam2_hiera_l.yaml",
            "072824",
            "sam2_hiera_large.pt",
            "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b",
            897_952_466,
        ),
        # EdgeTAM ships its checkpoint in its repository (facebookresearch/EdgeTAM, checkpoints/edgetam.pt,
        # Apache-2.0); no public project pins its digest, so it is recorded on first download.
        ModelSpec(
            "edgetam",
            "configs/edgetam.yaml",
            "https://github.com/facebookresearch/EdgeTAM/raw/main/checkpoints/edgetam.pt",
            "edgetam.pt",
        ),
        # EfficientTAM's checkpoints (yformer/EfficientTAM, checkpoints/download_checkpoints.sh, Apache-2.0);
        # no public project pins their digests, so each is recorded on first download.
        *(
            ModelSpec(
                f"efficienttam-{size}{suffix.replace('_512x512', '-512')}",
                f"configs/efficienttam/efficienttam_{size}{suffix}.yaml",
                f"{EFFICIENTTAM_BASE_URL}/efficienttam_{size}{suffix}.pt",
                f"efficienttam_{size}{suffix}.pt",
            )
            for size in ("ti", "s")
            for suffix in ("", "_512x512")
        ),
    )
}

#: The known models by name (read-only view of the registry).
MODELS = MappingProxyType(_REGISTRY)


def resolve_model(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a model name; an unknown name raises ``ValueError`` listing the known ones."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}")
    return spec


def _as_spec(name_or_spec: Union[str, ModelSpec]) -> ModelSpec:
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else resolve_model(name_or_spec)


def cache_dir() -> Path:
    """The cache folder: ``$SAM2LONG_CACHE`` if set and non-empty, else ``~/.cache/sam2long``."""
    value = os.environ.get(ENV_CACHE, "")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "sam2long"


def checkpoint_path(
    name_or_spec: Union[str, ModelSpec], *, cache: Optional[Union[str, os.PathLike]] = None
) -> Path:
    """Where the model's checkpoint lives in the cache (``<cache>/checkpoints/<filename>``), present or not."""
    spec = _as_spec(name_or_spec)
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    return root / "checkpoints" / spec.filename


def offline_from_env() -> bool:
    """``$SAM2LONG_OFFLINE`` as a bool (``1/true/yes/on`` or ``0/false/no/off``/unset); else ``ValueError``."""
    value = os.environ.get(ENV_OFFLINE, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"${ENV_OFFLINE}={os.environ[ENV_OFFLINE]!r} is not a boolean; use 1 or 0")


def download_url(spec: ModelSpec, base_url: Optional[str] = None) -> str:
    """The URL to fetch: ``base_url`` (or ``$SAM2LONG_BASE_URL``) replaces the official prefix.

    URLs outside ``https://dl.fbaipublicfiles.com/segment_anything_2`` are used unchanged.
    """
    option = "base_url"
    if base_url is None:
        base_url, option = os.environ.get(ENV_BASE_URL) or None, f"${ENV_BASE_URL}"
    if base_url is None:
        return spec.url
    parsed = urllib.parse.urlparse(base_url)
    if parsed.scheme not in ("http", "https", "file") or (parsed.scheme != "file" and not parsed.netloc):
        raise ValueError(f"{option} {base_url!r} is not an http(s):// or file:// URL")
    prefix = OFFICIAL_BASE_URL + "/"
    if not spec.url.startswith(prefix):
        return spec.url
    return base_url.rstrip("/") + "/" + spec.url[len(prefix) :]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> Optional[str]:
    """The digest recorded in ``<file>.sha256`` (``sha256sum`` format), or None when there is none."""
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text(encoding="utf-8").split()
    if not fields or not _SHA256_RE.fullmatch(fields[0]):
        raise ChecksumMismatchError(
            f"{sidecar} does not hold a sha256 digest; delete it and {path}, then fetch again"
        )
    return fields[0]


def _write_sidecar(path: Path, digest: str) -> None:
    """Record ``digest`` for ``path`` in ``<file>.sha256``, atomically (temp file + rename)."""
    sidecar = _sidecar(path)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, sidecar)


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _manual_hint(spec: ModelSpec, url: str, target: Path) -> str:
    """Where to put a checkpoint fetched by hand, for Python and command-line users."""
    hint = (
        f"download {url} by hand (or run {_SCRIPT_HINT}) and either pass the file as --checkpoint FILE "
        f"on the command line (checkpoint=FILE in Python) or copy it to {target}"
    )
    if spec.sha256 is not None:
        hint += " (only the official file: any other file there fails the sha256 check and is deleted)"
    elif spec.size_bytes is not None:
        hint += f" (a file there of another size than {spec.size_bytes} bytes is deleted)"
    return hint


def _verify_cached(spec: ModelSpec, path: Path) -> None:
    """Check a file already under its final name: registry sha256, else the recorded one, else record it.

    A file placed by hand for a model without a known sha256 is trusted on first use: its digest
    is recorded then. A mismatch deletes the file (so the next call fetches it again) and raises.
    """
    expected, source = spec.sha256, "the registry"
    if expected is None:
        expected, source = _read_sidecar(path), f"recorded in {_sidecar(path)}"
    if expected is None:
        size = path.stat().st_size
        if spec.size_bytes is not None and size != spec.size_bytes:
            _unlink(path)
            raise ChecksumMismatchError(
                f"checkpoint {path} of model {spec.name!r} has {size} bytes, expected {spec.size_bytes}; "
                "the file was deleted"
            )
        _write_sidecar(path, _sha256_file(path))
        return
    actual = _sha256_file(path)
    if actual != expected:
        _unlink(path, _sidecar(path))
        raise ChecksumMismatchError(
            f"checkpoint {path} of model {spec.name!r} is corrupted or not the official file: "
            f"sha256 {actual}, expected {expected} ({source}); the file was deleted, fetch it again"
        )


@contextlib.contextmanager
def _download_lock(target: Path) -> Iterator[None]:
    """Serialise downloads of one file across processes (e.g. torchrun ranks) with ``flock`` where available.

    The holder deletes ``<file>.lock`` before releasing it, so no lock file outlives a download
    (failed or not); a waiter that wakes up on a deleted lock file locks the current one instead.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = target.with_name(target.name + ".lock")
    while True:
        fh = open(lock, "a+b")
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            current = os.path.samestat(os.fstat(fh.fileno()), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            break
        fh.close()  # the previous holder deleted this lock file: lock the one now at its path
    try:
        yield
    finally:
        _unlink(lock)
        fh.close()


_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _content_range(header: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``(first byte, total size)`` of a ``Content-Range`` header; None for what it does not say."""
    match = _CONTENT_RANGE_RE.fullmatch((header or "").strip())
    if match is None:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _download(spec: ModelSpec, url: str, target: Path, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``<target>.part`` (resuming it when possible), verify, then rename to ``target``."""
    part = target.with_name(target.name + ".part")

    def unavailable(reason: str) -> CheckpointUnavailableError:
        kept = f"; the partial file {part} is kept and the next call resumes it" if part.exists() else ""
        return CheckpointUnavailableError(
            f"cannot download model {spec.name!r} from {url}: {reason}{kept}; "
            + _manual_hint(spec, url, target)
        )

    complete = False
    for _ in range(2):  # a second pass only when the partial file cannot be continued
        offset = part.stat().st_size if part.is_file() else 0
        if spec.size_bytes is not None and offset > spec.size_bytes:
            _unlink(part)
            offset = 0
        if offset and offset == spec.size_bytes:
            complete = True
            break
        headers = {"User-Agent": "sam2long", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and offset:
                if _content_range(err.headers.get("Content-Range"))[1] == offset:
                    complete = True  # the partial file already holds every byte
                    break
                _unlink(part)
                continue
            raise unavailable(f"HTTP {err.code} {err.reason}") from err
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise unavailable(f"{type(err).__name__}: {err}") from err
        with response:
            status = response.status or 200
            first, total = _content_range(response.headers.get("Content-Range"))
            if status == 206 and first != offset:
                _unlink(part)  # not the range asked for: start over
                continue
            if status != 206:
                offset = 0  # the server sent the whole file: restart from its first byte
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if total is None:
                total = offset + length if length is not None else spec.size_bytes
            received = _stream(response, part, offset, total, progress, spec.filename, unavailable)
        if length is not None and received < length:
            raise unavailable(f"the transfer ended after {offset + received} of {offset + length} bytes")
        complete = True
        break
    if not complete:
        raise unavailable("the server did not continue the partial download as asked")
    _finish(spec, url, part, target)


def _stream(
    response: Any,
    part: Path,
    offset: int,
    total: Optional[int],
    progress: bool,
    label: str,
    unavailable: Callable[[str], CheckpointUnavailableError],
) -> int:
    """Append the response body to ``part`` (truncated first when ``offset`` is 0); returns the bytes read."""
    received = 0
    try:
        fh = open(part, "ab" if offset else "wb")
    except OSError as err:
        raise OSError(f"cannot write the partial download {part}: {err}") from err
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not progress,
    )
    with fh, bar:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as err:
                fh.flush()
                reason = f"the transfer failed after {offset + received} bytes ({type(err).__name__}: {err})"
                raise unavailable(reason) from err
            if not chunk:
                break
            try:
                fh.write(chunk)
            except OSError as err:
                raise OSError(f"cannot write the partial download {part}: {err}") from err
            received += len(chunk)
            bar.update(len(chunk))
        fh.flush()
        os.fsync(fh.fileno())
    return received


def _finish(spec: ModelSpec, url: str, part: Path, target: Path) -> None:
    """Verify the complete ``part`` (sha256 if known, else size and record the digest), then rename it."""
    actual = _sha256_file(part)
    if spec.sha256 is not None:
        if actual != spec.sha256:
            _unlink(part)
            raise ChecksumMismatchError(
                f"checkpoint {target} of model {spec.name!r} downloaded from {url} is corrupted: "
                f"sha256 {actual}, expected {spec.sha256}; the download was deleted, fetch it again"
            )
    else:
        size = part.stat().st_size
        if spec.size_bytes is not None and size != spec.size_bytes:
            _unlink(part)
            raise ChecksumMismatchError(
                f"checkpoint {target} of model {spec.name!r} downloaded from {url} has {size} bytes, "
                f"expected {spec.size_bytes}; the download was deleted, fetch it again"
            )
        _write_sidecar(target, actual)
    os.replace(part, target)


def fetch_checkpoint(
    name_or_spec: Union[str, ModelSpec],
    *,
    cache: Optional[Union[str, os.PathLike]] = None,
    offline: bool = False,
    progress: bool = True,
    base_url: Optional[str] = None,
    timeout: float = 60.0,
) -> Path:
    """The local checkpoint of a model, downloaded into the cache on first use.

    A cached file is verified on every call against the registry's sha256 (or, where the registry
    has none, the digest recorded at download in ``<file>.sha256``; a file placed by hand has its
    digest recorded on first use). A mismatch deletes the file and raises
    :class:`ChecksumMismatchError` naming the file and both digests.

    A download shows a tqdm bar (``progress``), continues an earlier ``<file>.part`` with a
    ``Range`` request when the server answers 206 (else starts over), is verified (sha256 if known,
    else size if known), and only then renamed to its final name. ``offline`` (or
    ``$SAM2LONG_OFFLINE=1``) never touches the network. A missing file in offline mode or a network
    failure raises :class:`CheckpointUnavailableError` naming the URL and the exact path where to
    place the file by hand. ``base_url`` (or ``$SAM2LONG_BASE_URL``) replaces the official URL
    prefix (mirrors, tests); ``timeout`` is in seconds per network operation.
    """
    spec = _as_spec(name_or_spec)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    target = checkpoint_path(spec, cache=cache)
    url = download_url(spec, base_url)
    offline = bool(offline) or offline_from_env()
    if target.is_file():
        _verify_cached(spec, target)
        return target
    if offline:
        raise CheckpointUnavailableError(
            f"checkpoint of model {spec.name!r} is not in the cache ({target}) and offline mode is on "
            f"(--offline, offline=True or ${ENV_OFFLINE}=1); {_manual_hint(spec, url, target)}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the cache folder {target.parent}: {err}") from err
    with _download_lock(target):
        if target.is_file():  # another process finished it while this one waited
            _verify_cached(spec, target)
        else:
            _download(spec, url, target, progress, timeout)
    return target


def build_model_by_name(
    name: Union[str, ModelSpec],
    *,
    tracker: str = "sam2long",
    device: Optional[Any] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    offline: bool = False,
    dtype: str = "auto",
    **kwargs: Any,
):
    """A video predictor for a model name and tracker (:data:`sam2long.tracker_spec.TRACKERS`: SAM2Long,
    plain SAM 2, SAMURAI, ...).

    The checkpoint is ``checkpoint`` when given, else :func:`fetch_checkpoint` (cache, download,
    ``offline``). ``dtype`` is the precision policy (:mod:`sam2.precision`; ``"auto"`` here, as on the
    command line, where the upstream-named builders default to ``"float32"``). ``kwargs`` go to :func:`sam2long.build_sam2long_video_predictor` (tree settings,
    ``config=...``, hydra overrides) or :func:`sam2.build_sam.build_sam2_video_predictor`.
    """
    from sam2long.tracker_spec import build_video_predictor, check_tracker

    spec = _as_spec(name)
    check_tracker(tracker)
    ckpt = Path(checkpoint) if checkpoint is not None else fetch_checkpoint(spec, offline=offline)
    return build_video_predictor(tracker, spec.config, ckpt, device, dtype=dtype, **kwargs)


# Seconds per frame on a 2-core CPU (AMD EPYC with AVX512-BF16, no AMX; torch 2.14.1, 2 threads; 1024 px,
# 2026-12-04; README "Precision and speed"), as (bf16, float32): the image encoder of each model size, and
# the rest of a frame (memory attention, decoder, memory encoder, tree), which is the same for every size
# (benchmarks/propagation.py, 2 objects, SAM2Long P=3).
_CPU_ENCODER_SECONDS = {"t": (1.79, 2.47), "s": (1.95, 3.31), "b+": (3.56, 4.99), "l": (7.49, 13.19)}
_CPU_REST_SECONDS = {"sam2": (4.55, 5.30), "sam2long": (6.95, 8.82)}


def cpu_cost_hint(config_file: str, device: Any, tracker: str, bf16: bool) -> Optional[str]:
    """One line for a CPU run of a model larger than tiny: its measured cost per frame and the faster
    choices; None on other devices, for tiny models and for configs not in the table (the size is the
    config name's last part: ``sam2.1_hiera_l.yaml`` -> ``l``)."""
    if str(device).split(":")[0] != "cpu":
        return None
    if "hiera" not in Path(config_file).stem:
        return None  # the table is for SAM 2's Hiera sizes
    size = Path(config_file).stem.rsplit("_", 1)[-1]
    if size not in _CPU_ENCODER_SECONDS or size == "t" or tracker not in _CPU_REST_SECONDS:
        return None
    pick = 0 if bf16 else 1
    encoder, rest = _CPU_ENCODER_SECONDS[size][pick], _CPU_REST_SECONDS[tracker][pick]
    name = Path(config_file).stem
    return (
        f"note: {name} on a CPU costs about {encoder + rest:.0f} s per frame with {tracker} (2 objects, "
        f"{'bf16' if bf16 else 'float32'}, measured on a 2-core CPU); faster: --model sam2.1-tiny, "
        "--tracker sam2, --max_frames N, or a CUDA GPU"
    )


# --- `sam2long download` ---------------------------------------------------------------------------


def add_download_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``sam2long download`` arguments to ``parser`` (for a subcommand parser)."""
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"models to fetch: {', '.join(_REGISTRY)}")
    parser.add_argument("--all", action="store_true", help=f"fetch all {len(_REGISTRY)} models")
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help=f"cache folder (default: ${ENV_CACHE} or ~/.cache/sam2long)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help=f"only check the cache, never use the network (also ${ENV_OFFLINE}=1)",
    )
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_download(args: argparse.Namespace) -> int:
    """Fetch (or with ``--offline`` check) each named model; prints ``name: path`` per model.

    Returns 0 when every model is in the cache and verified, 2 for bad arguments, 1 otherwise,
    with one ``error:`` line on stderr per failing model naming it and its URL or file.
    """
    prog = "sam2long download"
    if args.all and args.names:
        print(f"{prog}: error: give model names or --all, not both", file=sys.stderr)
        return 2
    names = list(_REGISTRY) if args.all else list(dict.fromkeys(args.names))
    if not names:
        print(
            f"{prog}: error: name at least one model ({', '.join(_REGISTRY)}) or use --all", file=sys.stderr
        )
        return 2
    unknown = [name for name in names if name not in _REGISTRY]
    if unknown:
        listed = ", ".join(map(repr, unknown))
        print(
            f"{prog}: error: unknown model(s) {listed}; known models: {', '.join(_REGISTRY)}", file=sys.stderr
        )
        return 2
    failed = 0
    for name in names:
        try:
            path = fetch_checkpoint(name, cache=args.cache, offline=args.offline)
        except (RuntimeError, OSError, ValueError) as error:
            failed += 1
            print(f"{prog}: error: {name}: {_one_line(error)}", file=sys.stderr)
            continue
        print(f"{name}: {path}")
    return 1 if failed else 0


class _ModelNameAction(argparse.Action):
    """Stores ``--model`` and notes that it was given (its default must not hide a conflict)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.model_given = True


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The ``model`` flags of the commands that run a model: ``--model`` by name, or ``--config`` +
    ``--checkpoint``, ``--offline``, ``--hydra_overrides``, ``--device`` and ``--dtype``. Returns the group."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="sam2.1-tiny",
        action=_ModelNameAction,
        help="model name, fetched on first use (default: %(default)s); not with --config",
    )
    model.add_argument("--config", default=None, help="a SAM 2 hydra config instead of --model")
    model.add_argument(
        "--checkpoint", default=None, help="checkpoint file (with --config, or instead of the download)"
    )
    model.add_argument(
        "--offline", action="store_true", help="never download; fail if the checkpoint is not cached"
    )
    model.add_argument(
        "--hydra_overrides", nargs="*", default=[], metavar="OVERRIDE", help="e.g. ++model.image_size=512"
    )
    model.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    from sam2.precision import add_dtype_argument

    add_dtype_argument(model)
    return model


def model_files_from_args(args: argparse.Namespace) -> tuple[str, str, Optional[str]]:
    """``(config, checkpoint, model name)`` from :func:`add_model_arguments` flags, fetching the
    checkpoint into the cache on first use; a bad choice exits with a message."""
    if args.config is not None:
        if getattr(args, "model_given", False):
            raise SystemExit(
                f"error: --model {args.model} and --config {args.config} both choose the model; give "
                "--model NAME (with --checkpoint FILE for a local copy of its weights) or --config CFG "
                "--checkpoint FILE"
            )
        if args.checkpoint is None:
            raise SystemExit("error: --config needs --checkpoint")
        return args.config, str(args.checkpoint), None
    try:
        spec = resolve_model(args.model)
        checkpoint = args.checkpoint or str(fetch_checkpoint(spec, offline=args.offline))
    except (ValueError, RuntimeError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    return spec.config, str(checkpoint), spec.name


def download_main(argv: Optional[Sequence[str]] = None) -> int:
    """``sam2long download [NAMES...|--all] [--cache DIR] [--offline]``; returns the exit status."""
    parser = add_download_arguments(
        argparse.ArgumentParser(
            prog="sam2long download",
            description="Download official SAM 2 / SAM 2.1 checkpoints into the cache, verified by sha256.",
        )
    )
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    return run_download(args)
