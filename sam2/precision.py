"""The precision policy, in one place: which dtype the network computes in, and where.

``dtype`` is ``"auto"``, ``"float32"`` or ``"bfloat16"`` everywhere it is asked for (builders,
``--dtype`` on every command). ``bfloat16`` means bf16 autocast around the predictors' public calls,
exactly where upstream SAM 2 autocasts (its VOS script, notebooks and demo wrap inference in
``torch.autocast("cuda", dtype=torch.bfloat16)``); ``float32`` leaves the dtype alone, so a caller's
own autocast (upstream's usage) still applies. ``auto`` picks bf16 on CUDA, bf16 on a CPU that
computes it natively (Intel AMX, AVX512-BF16, Arm BF16) and float32 elsewhere.

Only the network computes in bf16: outputs handed to users and to the memory tree are float32 (the
tree's IoU / object-score comparisons and cumulative scores are made in float32 or wider).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")

_F = TypeVar("_F", bound=Callable[..., Any])


def check_dtype(dtype: Union[str, torch.dtype]) -> str:
    """The policy name of ``dtype`` (``torch.float32`` / ``torch.bfloat16`` are accepted too)."""
    if isinstance(dtype, torch.dtype):
        names = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
        if dtype not in names:
            raise ValueError(f"dtype {dtype} is not supported; choose one of {', '.join(DTYPE_CHOICES)}")
        return names[dtype]
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPE_CHOICES)}")
    return dtype


def add_dtype_argument(parser: Any) -> None:
    """The ``--dtype`` flag of every command (a parser or an argument group)."""
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="compute precision: auto = bf16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16, "
        "Arm BF16), else float32 (default: %(default)s)",
    )


def _cpu_flags() -> set[str]:
    """Feature flags of the first CPU in /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> Optional[str]:
    """How this CPU computes bf16 natively: ``"amx"``, ``"avx512_bf16"``, ``"arm_bf16"``, or None.

    Asks torch first (its own kernel dispatch), then the kernel's CPU flags (where there are none,
    e.g. macOS, the answer is None and ``auto`` stays float32).
    """
    cpu = getattr(torch, "cpu", None)
    probes = (("amx", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return name
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if "bf16" in flags and platform.machine().lower() in ("aarch64", "arm64"):
        return "arm_bf16"
    return None


@dataclass(frozen=True)
class Precision:
    """The resolved policy for one device: the compute dtype and why it was chosen."""

    requested: str  # "auto" | "float32" | "bfloat16"
    dtype: torch.dtype  # the network's compute dtype (float32 = no autocast of ours)
    device_type: str
    reason: str

    @property
    def name(self) -> str:
        return "bfloat16" if self.dtype == torch.bfloat16 else "float32"

    @property
    def short(self) -> str:
        """``bf16`` / ``fp32``, for progress lines."""
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device type, or nothing for float32."""
        if self.dtype == torch.bfloat16:
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def summary(self) -> dict[str, str]:
        """What ``summary.json`` records."""
        return {"dtype": self.name, "requested": self.requested, "reason": self.reason}


def resolve_precision(dtype: Union[str, torch.dtype], device: Union[str, torch.device]) -> Precision:
    """Resolve ``dtype`` (``auto`` / ``float32`` / ``bfloat16``) for ``device``."""
    requested = check_dtype(dtype)
    device_type = torch.device(device).type
    if requested == "float32":
        return Precision(requested, torch.float32, device_type, "float32 requested")
    if requested == "bfloat16":
        return Precision(requested, torch.bfloat16, device_type, "bfloat16 requested")
    if device_type == "cuda":
        return Precision(requested, torch.bfloat16, device_type, "CUDA: bf16 autocast as upstream")
    if device_type == "cpu":
        native = cpu_bf16_support()
        if native is not None:
            return Precision(requested, torch.bfloat16, device_type, f"CPU computes bf16 natively ({native})")
        return Precision(requested, torch.float32, device_type, "CPU without native bf16")
    return Precision(requested, torch.float32, device_type, f"{device_type}: float32")


def autocast_method(fn: _F) -> _F:
    """Run a method under its object's ``precision.autocast()``.

    For generator functions the autocast is entered around each resumption only, so it never leaks
    into the caller's code between yields.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            precision = self.precision
            inner = fn(self, *args, **kwargs)
            try:
                while True:
                    with precision.autocast():
                        try:
                            item = next(inner)
                        except StopIteration as stop:
                            return stop.value
                    yield item
            finally:
                inner.close()

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.precision.autocast():
            return fn(self, *args, **kwargs)

    return method  # type: ignore[return-value]
