"""Golden outputs of the official EfficientTAM: what CI compares our ``sam2`` against.

The official code is on GitHub only (see :mod:`efficienttam_ref`), which CI cannot reach, so
``tools/golden/efficienttam.py`` runs it once on the drivers of ``test_efficienttam`` and stores
small reductions of its outputs here; the tests reduce our outputs the same way and compare.

Files in :data:`GOLDEN_DIR`:

* ``manifest.json``: reference repo, commit and tree digest, versions and date of the run, the
  sha256 of the random state dict, and :func:`describe` of every driver's inputs;
* ``keys.json``: ``{config: [[key, shape], ...]}`` of the official models (all four configs);
* ``image.npz``: :func:`reduce_image` of the official image-predictor outputs (float32);
* ``video.npz``: :func:`reduce_video` of the official video outputs, binary masks packed with
  ``np.packbits`` (:func:`pack` / :func:`unpack`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "efficienttam"
MANIFEST = "manifest.json"
KEYS = "keys.json"
IMAGE = "image.npz"
VIDEO = "video.npz"
GRID_STRIDE = 8
REGENERATE = "regenerate with tools/golden/efficienttam.py (see its docstring)"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in key order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(value: Any) -> Any:
    """JSON description of driver inputs: small tensors as values, large ones by shape and sha256."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        if t.numel() <= 16:
            return {"dtype": str(t.dtype), "value": t.tolist()}
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return {"dtype": str(t.dtype), "shape": list(t.shape), "sha256": _sha256_bytes(raw)}
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"cannot describe {type(value).__name__}")


def describe_frames(frames_dir: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the JPEG frames."""
    return {p.name: _sha256_bytes(p.read_bytes()) for p in sorted(Path(frames_dir).glob("*.jpg"))}


def describe_args(args: dict[str, Any]) -> dict[str, Any]:
    """:func:`describe` of a driver's ``args``; the checkpoint and frame folder (temporary paths)
    are replaced by the state dict's sha256 and the frames' sha256s."""
    out = dict(args)
    if "checkpoint" in out:
        state = torch.load(out.pop("checkpoint"), map_location="cpu", weights_only=True)["model"]
        out["checkpoint_state_dict_sha256"] = state_dict_sha256(state)
    if "frames_dir" in out:
        out["frames"] = describe_frames(out.pop("frames_dir"))
    return describe(out)


def keys_to_json(keys: dict[str, dict[str, tuple[int, ...]]]) -> dict[str, list[list[Any]]]:
    """``keys_driver`` output as JSON: ``{config: [[key, [shape]], ...]}`` in state-dict order."""
    return {config: [[k, list(shape)] for k, shape in per.items()] for config, per in keys.items()}


def _grid(n: int) -> np.ndarray:
    """Every ``GRID_STRIDE``-th index and the last one."""
    return np.unique(np.r_[np.arange(0, n, GRID_STRIDE), n - 1])


def reduce_image(out: dict[Any, Any]) -> dict[str, np.ndarray]:
    """``image_driver`` output as float32 arrays: the embedding, and per prompt and multimask
    setting the IoUs, the low-res logits in full and the full-resolution logits on a grid (every
    ``GRID_STRIDE``-th row and column plus the last: they are bilinear upsamplings of the low-res
    logits, so the grid checks the resizing and cropping at a fraction of the size)."""
    red = {"image_embed": out["image_embed"].float().numpy()}
    for key, value in out.items():
        if key == "image_embed":
            continue
        name, multimask = key
        tag = f"{name}.multimask{int(multimask)}"
        logits = value["logits"].float().numpy()
        red[f"{tag}.ious"] = value["ious"].float().numpy()
        red[f"{tag}.low_res"] = value["low_res"].float().numpy()
        rows, cols = _grid(logits.shape[-2]), _grid(logits.shape[-1])
        red[f"{tag}.logits_grid"] = np.ascontiguousarray(logits[..., rows, :][..., cols])
    return red


def reduce_video(out: dict[str, Any]) -> dict[str, np.ndarray]:
    """``video_driver`` output as arrays: object ids and binary masks (``logits > 0``) of each
    prompt call; frame indices, object ids and binary masks of each propagation run."""
    red = {}
    for i, (ids, masks) in enumerate(out["prompts"]):
        red[f"prompt{i}.obj_ids"] = np.asarray(ids, dtype=np.int64)
        red[f"prompt{i}.masks"] = (masks > 0).numpy()
    for r, run in enumerate(out["runs"]):
        red[f"run{r}.frames"] = np.asarray([f for f, _, _ in run], dtype=np.int64)
        red[f"run{r}.obj_ids"] = np.asarray([ids for _, ids, _ in run], dtype=np.int64)
        red[f"run{r}.masks"] = np.stack([(m > 0).numpy() for _, _, m in run])
    return red


def pack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Boolean arrays as ``np.packbits`` bytes plus their shape (``<name>.shape``)."""
    out = {}
    for name, a in arrays.items():
        if a.dtype == np.bool_:
            out[f"{name}.packed"] = np.packbits(a.reshape(-1))
            out[f"{name}.shape"] = np.asarray(a.shape, dtype=np.int64)
        else:
            out[name] = a
    return out


def unpack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack`."""
    out = {}
    for name, a in arrays.items():
        if name.endswith(".shape"):
            continue
        if name.endswith(".packed"):
            base = name.removesuffix(".packed")
            shape = tuple(int(s) for s in arrays[f"{base}.shape"])
            out[base] = np.unpackbits(a, count=int(np.prod(shape))).astype(bool).reshape(shape)
        else:
            out[name] = a
    return out


def load_manifest() -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / MANIFEST).read_text())


def load_keys() -> dict[str, list[list[Any]]]:
    return json.loads((GOLDEN_DIR / KEYS).read_text())


def load_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / name, allow_pickle=False) as data:
        return unpack({k: data[k] for k in data.files})
