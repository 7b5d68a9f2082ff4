"""Session storage of tracked frame outputs with a RAM budget that spills to disk.

A video session keeps one output per object and tracked frame (memory features, low-res mask
logits, object pointer, object score), read back by memory attention on nearby frames and by later
interaction (a click on an already tracked frame, a second propagation). Kept in RAM (or VRAM) that
grows with the video: about 0.8 MB per object and frame at 1024 px.

:class:`OutputStore` holds all of a session's tracked outputs. The most recently written or read
entries stay where they are (on the compute device) up to ``ram_budget_bytes``; older ones are
written to a private temporary folder and read back, bit for bit, when asked for. Memory attention
reads only the latest frames of each object, which are always the most recently used entries, so
with a budget above that window propagation never touches the disk. Nothing is dropped: an entry
leaves the store only when the session removes it. With ``retain=False`` the store keeps nothing at
all (for trackers whose memory lives elsewhere, e.g. SAM2Long with ``store_outputs=False``).

Each object sees its outputs through :meth:`OutputStore.frames`, a ``MutableMapping[frame_idx,
output]`` that behaves like the plain dict upstream SAM 2 keeps in the session.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from sam2.engine import FrameOutput

#: Default RAM budget of a session's tracked outputs (a few seconds of video at 1024 px).
DEFAULT_RAM_BUDGET_BYTES = 64 * 2**20

#: Entries kept by reference when spilled: shared values that cost nothing to keep in RAM.
_SHARED_KEYS = ("maskmem_pos_enc",)

_Key = tuple[int, int]  # (namespace, frame index)


class OutputStoreError(RuntimeError):
    """The spill folder cannot be created or written (missing, read-only, or the disk is full)."""


@dataclass(frozen=True)
class StoreStats:
    """What an :class:`OutputStore` holds, in its own accounting (tensor bytes, not process RSS)."""

    ram_bytes: int  # bytes of the entries kept in memory
    disk_bytes: int  # bytes of the entries spilled to disk (tensor payload)
    ram_entries: int
    disk_entries: int
    spills: int  # entries written to disk so far
    loads: int  # entries read back from disk so far
    peak_ram_bytes: int  # largest ram_bytes after any write


@dataclass
class _Spilled:
    path: Path
    nbytes: int
    shared: dict[str, Any]  # values kept by reference (not written)
    devices: dict[str, torch.device]  # where each tensor value lived


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return 0


def _owning(value: Any) -> Any:
    """``value`` itself, or a compact copy if it is a view into a larger tensor (whose storage it
    would otherwise keep alive, unaccounted, in memory and in a spilled file)."""
    if isinstance(value, torch.Tensor) and value.untyped_storage().nbytes() > _tensor_bytes(value):
        return value.clone()
    return value


def entry_bytes(out: FrameOutput) -> int:
    """Bytes an output holds of its own (shared values such as positional encodings excluded)."""
    return sum(_tensor_bytes(v) for k, v in out.items() if k not in _SHARED_KEYS)


class OutputStore:
    """All tracked outputs of one session, in memory up to a budget and on disk beyond it.

    Args:
        ram_budget_bytes: entries beyond this many tensor bytes are spilled to disk, least recently
            used first (the newest entry always stays in memory). ``None`` keeps everything in memory.
        spill_dir: parent folder of the private spill folder (default: the system temp folder). The
            private folder is created on the first spill and removed with the store.
        retain: ``False`` keeps no entries at all: writes are ignored and reads find nothing.
    """

    def __init__(
        self,
        ram_budget_bytes: Optional[int] = DEFAULT_RAM_BUDGET_BYTES,
        spill_dir: Optional[Union[str, os.PathLike]] = None,
        retain: bool = True,
    ) -> None:
        if ram_budget_bytes is not None and ram_budget_bytes < 0:
            raise ValueError(f"ram_budget_bytes must be >= 0 or None, got {ram_budget_bytes}")
        self.ram_budget_bytes = ram_budget_bytes
        self.spill_parent = Path(spill_dir) if spill_dir is not None else None
        self.retain = retain
        self._ram: OrderedDict[_Key, FrameOutput] = OrderedDict()
        self._ram_sizes: dict[_Key, int] = {}
        self._disk: dict[_Key, _Spilled] = {}
        self._frames: dict[int, set[int]] = {}  # namespace -> frames held (in memory or on disk)
        self._ram_bytes = 0
        self._peak_ram_bytes = 0
        self._spills = 0
        self._loads = 0
        self._names = itertools.count()
        self._folder: Optional[Path] = None
        self._finalizer: Optional[weakref.finalize] = None

    # ------------------------------------------------------------------ views

    def frames(self) -> FrameOutputs:
        """A new, empty per-object view (``frame_idx -> output``) backed by this store."""
        return FrameOutputs(self, next(self._names))

    @property
    def stats(self) -> StoreStats:
        return StoreStats(
            ram_bytes=self._ram_bytes,
            disk_bytes=sum(s.nbytes for s in self._disk.values()),
            ram_entries=len(self._ram),
            disk_entries=len(self._disk),
            spills=self._spills,
            loads=self._loads,
            peak_ram_bytes=self._peak_ram_bytes,
        )

    @property
    def spill_folder(self) -> Optional[Path]:
        """The private folder spilled entries live in (None before the first spill)."""
        return self._folder

    def close(self) -> None:
        """Drop every entry and remove the spill folder."""
        self._ram.clear()
        self._ram_sizes.clear()
        self._disk.clear()
        self._frames.clear()
        self._ram_bytes = 0
        if self._finalizer is not None:
            self._finalizer()

    # ------------------------------------------------------------------ entries

    def _contains(self, key: _Key) -> bool:
        return key in self._ram or key in self._disk

    def _keys(self, namespace: int) -> list[int]:
        return sorted(self._frames.get(namespace, ()))

    def _put(self, key: _Key, out: FrameOutput) -> None:
        if not self.retain:
            return
        self._drop(key)
        for k, v in out.items():
            if k not in _SHARED_KEYS:
                out[k] = _owning(v)  # same values; the entry stays the caller's dict
        size = entry_bytes(out)
        self._ram[key] = out
        self._frames.setdefault(key[0], set()).add(key[1])
        self._ram_sizes[key] = size
        self._ram_bytes += size
        self._evict()
        self._peak_ram_bytes = max(self._peak_ram_bytes, self._ram_bytes)

    def _get(self, key: _Key) -> FrameOutput:
        out = self._ram.get(key)
        if out is not None:
            self._ram.move_to_end(key)
            return out
        spilled = self._disk.pop(key, None)
        if spilled is None:
            raise KeyError(key[1])
        self._frames[key[0]].discard(key[1])
        out = self._load(spilled)
        self._loads += 1
        self._put(key, out)
        return out

    def _drop(self, key: _Key) -> bool:
        self._frames.get(key[0], set()).discard(key[1])
        if key in self._ram:
            del self._ram[key]
            self._ram_bytes -= self._ram_sizes.pop(key)
            return True
        spilled = self._disk.pop(key, None)
        if spilled is None:
            return False
        spilled.path.unlink(missing_ok=True)
        return True

    def _evict(self) -> None:
        if self.ram_budget_bytes is None:
            return
        while self._ram_bytes > self.ram_budget_bytes and len(self._ram) > 1:
            key, out = self._ram.popitem(last=False)
            self._ram_bytes -= self._ram_sizes.pop(key)
            self._disk[key] = self._spill(key, out)
            self._spills += 1

    # ------------------------------------------------------------------ disk

    def _spill_dir(self) -> Path:
        if self._folder is None:
            parent = self.spill_parent if self.spill_parent is not None else Path(tempfile.gettempdir())
            try:
                self._folder = Path(tempfile.mkdtemp(prefix="sam2-session-", dir=parent))
            except OSError as error:
                raise OutputStoreError(
                    f"cannot create a spill folder for session outputs in {parent}: {error}"
                ) from error
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        return self._folder

    def _spill(self, key: _Key, out: FrameOutput) -> _Spilled:
        folder = self._spill_dir()
        path = folder / f"{key[0]}_{key[1]}.pt"
        shared = {k: out[k] for k in _SHARED_KEYS if k in out}
        devices = {k: v.device for k, v in out.items() if isinstance(v, torch.Tensor)}
        payload = {
            k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.items() if k not in shared
        }
        tmp = path.with_suffix(".tmp")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise OutputStoreError(f"cannot spill session outputs to {folder}: {error}") from error
        return _Spilled(path, entry_bytes(out), shared, devices)

    def _load(self, spilled: _Spilled) -> FrameOutput:
        try:
            payload = torch.load(spilled.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as error:
            raise OutputStoreError(f"cannot read spilled session output {spilled.path}: {error}") from error
        spilled.path.unlink(missing_ok=True)
        out = {
            k: (v.to(spilled.devices[k]) if isinstance(v, torch.Tensor) else v) for k, v in payload.items()
        }
        out.update(spilled.shared)
        return out


class FrameOutputs(MutableMapping):
    """One object's tracked outputs, ``frame_idx -> output``, stored in an :class:`OutputStore`."""

    def __init__(self, store: OutputStore, namespace: int) -> None:
        self._store = store
        self._namespace = namespace

    def __getitem__(self, frame_idx: int) -> FrameOutput:
        return self._store._get((self._namespace, frame_idx))

    def __setitem__(self, frame_idx: int, out: FrameOutput) -> None:
        self._store._put((self._namespace, frame_idx), out)

    def __delitem__(self, frame_idx: int) -> None:
        if not self._store._drop((self._namespace, frame_idx)):
            raise KeyError(frame_idx)

    def __contains__(self, frame_idx: object) -> bool:
        return isinstance(frame_idx, int) and self._store._contains((self._namespace, frame_idx))

    def __iter__(self) -> Iterator[int]:
        return iter(self._store._keys(self._namespace))

    def __len__(self) -> int:
        return len(self._store._frames.get(self._namespace, ()))

    def pop(self, frame_idx: int, *default: Any) -> Any:
        if frame_idx not in self:
            if default:
                return default[0]
            raise KeyError(frame_idx)
        out = self[frame_idx]
        del self[frame_idx]
        return out

    def clear(self) -> None:
        for frame_idx in self._store._keys(self._namespace):
            self._store._drop((self._namespace, frame_idx))
