"""Shared pytest fixtures: small thread count, test frames, seeded random checkpoints."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
BEDROOM_DIR = TESTS_DIR / "assets" / "bedroom"

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``cuda`` marker: the GPU subset run by ``benchmarks/gpu_check.sh`` (``-m cuda``)."""
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def random_state_dict(state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Replace every float tensor with seeded random values of the same name, shape and dtype.

    Each tensor draws from its own generator seeded by ``(seed, name)``, so the result does not
    depend on key order. Scales keep activations O(1) through the deep networks: weight matrices
    and conv kernels ~ N(0, 1/fan_in), 1-d ``*weight`` (norm scales) ~ 1 + N(0, 0.1^2), everything
    else (biases, embeddings, layer scales) ~ N(0, 0.1^2). Nothing is left at zero or one, so a
    forgotten bias, embedding or scale shows up in the outputs.
    """
    out = {}
    for name, ref in state_dict.items():
        if not ref.is_floating_point():
            out[name] = ref.clone()
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
        noise = torch.randn(ref.shape, generator=gen, dtype=torch.float32)
        if ref.dim() >= 2 and name.endswith("weight"):
            value = noise / max(ref[0].numel(), 1) ** 0.5
        elif ref.dim() == 1 and name.endswith("weight"):
            value = 1.0 + 0.1 * noise
        else:
            value = 0.1 * noise
        out[name] = value.to(ref.dtype)
    return out


@pytest.fixture(scope="session")
def bedroom_dir() -> Path:
    """Folder of the JPEG test frames (``00000.jpg`` ...)."""
    frames = sorted(BEDROOM_DIR.glob("*.jpg"))
    assert len(frames) >= 8, f"expected >= 8 test frames in {BEDROOM_DIR}, found {len(frames)}"
    return BEDROOM_DIR


def copy_first_frames(out: Path, count: int) -> Path:
    """Copy the first ``count`` bedroom frames into the folder ``out`` and return it."""
    for src in sorted(BEDROOM_DIR.glob("*.jpg"))[:count]:
        (out / src.name).write_bytes(src.read_bytes())
    return out


@pytest.fixture(scope="session")
def first_frames(bedroom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``first_frames(n)``: a folder with the first ``n`` bedroom frames (480x270), made once per ``n``."""
    made: dict[int, Path] = {}

    def make(count: int) -> Path:
        if count not in made:
            made[count] = copy_first_frames(tmp_path_factory.mktemp(f"frames{count}"), count)
        return made[count]

    return make


def set_object_score_bias(state_dict: dict[str, torch.Tensor], bias: float) -> None:
    """Set the output bias of the mask decoder's object-score head, in place.

    With random weights the object score barely depends on the input and sits near the random
    bias, so it decides alone whether every prediction is "object present" (real mask logits) or
    "absent" (a constant ``NO_OBJ_SCORE`` mask that would compare trivially). Tests pick the
    branch explicitly with a clearly positive or negative bias.
    """
    prefix = "sam_mask_decoder.pred_obj_score_head."
    keys = [
        k for k, v in state_dict.items() if k.startswith(prefix) and k.endswith("bias") and v.numel() == 1
    ]
    assert len(keys) == 1, f"expected one scalar output bias in the object-score head, found {keys}"
    state_dict[keys[0]].fill_(bias)


def checkpoint_state_dict(
    config_file: str, seed: int = 0, obj_score_bias: float | None = None
) -> dict[str, torch.Tensor]:
    """The seeded random state dict :func:`make_checkpoint` saves for ``config_file``.

    Key names and shapes come from our own model built without a checkpoint; ``obj_score_bias``
    (if given) is applied with :func:`set_object_score_bias`. Plain function, so golden-file
    generators (``tools/golden/``) feed the reference exactly the weights the tests use.
    """
    from sam2.build_sam import build_sam2

    model = build_sam2(config_file, None, device="cpu", apply_postprocessing=False)
    state_dict = random_state_dict(model.state_dict(), seed)
    if obj_score_bias is not None:
        set_object_score_bias(state_dict, obj_score_bias)
    return state_dict


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory writing ``{"model": state_dict}`` with seeded random weights for a config.

    The weights are :func:`checkpoint_state_dict`'s. Files are cached for the session.
    """
    made: dict[tuple[str, int, float | None], Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def make(config_file: str, seed: int = 0, obj_score_bias: float | None = None) -> Path:
        key = (config_file, seed, obj_score_bias)
        if key not in made:
            state_dict = checkpoint_state_dict(config_file, seed, obj_score_bias)
            path = root / f"{Path(config_file).stem}_seed{seed}_{len(made)}.pt"
            torch.save({"model": state_dict}, path)
            made[key] = path
        return made[key]

    return make
