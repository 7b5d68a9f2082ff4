"""Parity of state_dict key names and shapes with upstream sam2==1.1.0, for all 8 configs.

Official checkpoints load with strict key matching, so every name and shape must agree exactly.
Both sides build every model on CPU without a checkpoint (a few seconds even for Hiera-L;
the meta device is not usable since Hiera's constructor calls ``.item()``).
"""

from __future__ import annotations

from typing import Any

import pytest
from upstream_ref import run_both

CONFIGS = [
    f"configs/{family}/{family}_hiera_{size}.yaml"
    for family in ("sam2", "sam2.1")
    for size in ("t", "s", "b+", "l")
]


def key_shapes_driver(args: dict[str, Any]) -> dict[str, Any]:
    """Map each config to ``{state_dict key: shape}`` of the model it builds (runs on both sides)."""
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    shapes = {}
    for config in args["configs"]:
        model = build_sam2(config, None, device="cpu", apply_postprocessing=False)
        shapes[config] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        del model
    video = build_sam2_video_predictor(args["configs"][0], None, device="cpu")
    shapes["video_predictor"] = {k: tuple(v.shape) for k, v in video.state_dict().items()}
    return shapes


@pytest.fixture(scope="module")
def key_shapes() -> tuple[dict[str, Any], dict[str, Any]]:
    """(ours, upstream) key/shape maps, computed once for the module."""
    return run_both(key_shapes_driver, {"configs": CONFIGS})


@pytest.mark.parametrize("config", CONFIGS + ["video_predictor"])
def test_state_dict_keys_and_shapes_match_upstream(
    key_shapes: tuple[dict[str, Any], dict[str, Any]], config: str
) -> None:
    ours, theirs = key_shapes[0][config], key_shapes[1][config]
    missing = sorted(set(theirs) - set(ours))
    unexpected = sorted(set(ours) - set(theirs))
    assert not missing and not unexpected, f"missing={missing[:20]} unexpected={unexpected[:20]}"
    wrong = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert not wrong, f"shape mismatches (ours, upstream): {wrong}"
