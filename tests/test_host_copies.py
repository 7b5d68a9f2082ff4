"""Trackers read the decoder's scores with one device-to-host copy per model pass.

On a GPU every copy of a device tensor to the host (``.cpu()``, ``.item()``, ``float(t)``,
``.tolist()`` ...) waits for the device. CI has no GPU, so the test marks the decoder's IoU and
object-score outputs as "device" tensors (a ``torch.Tensor`` subclass that stays a subclass
through every op) and counts each read of such a tensor on the host from the propagation loop and
SAM2Long's tree code (``sam2/propagation.py``, ``sam2long/tracker.py``, ``tree.py``,
``memory_policy.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from sam2long import build_sam2long_video_predictor

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=128"]
ROOT = Path(__file__).resolve().parents[1]
TREE_FILES = {str(ROOT / "sam2" / "propagation.py")} | {
    str(ROOT / "sam2long" / name) for name in ("tracker.py", "tree.py", "memory_policy.py")
}
HOST_READS = {"cpu", "item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"}


class DeviceTensor(torch.Tensor):
    """A tensor that plays a device tensor: host reads from the tree's files are recorded."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            caller = sys._getframe(1)
            while caller is not None and caller.f_code.co_filename == __file__:
                caller = caller.f_back
            if caller is not None and caller.f_code.co_filename in TREE_FILES:
                cls.reads.append(f"{name} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
            plain = [a.as_subclass(torch.Tensor) if isinstance(a, DeviceTensor) else a for a in args]
            return func(*plain, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


@pytest.mark.parametrize("batch_objects", [True, False])
def test_one_host_copy_per_frame_for_the_tree(make_checkpoint, first_frames, batch_objects: bool) -> None:
    ckpt = make_checkpoint(CONFIG, obj_score_bias=5.0)
    predictor = build_sam2long_video_predictor(
        CONFIG, ckpt, "cpu", hydra_overrides_extra=OVERRIDES, batch_objects=batch_objects
    )
    decode = predictor.decode_candidates
    passes: list[int] = []

    def decode_on_device(features, memory):
        candidates = decode(features, memory)
        passes.append(features.frame_idx)
        return dataclasses.replace(
            candidates,
            ious=candidates.ious.as_subclass(DeviceTensor),
            object_score_logits=candidates.object_score_logits.as_subclass(DeviceTensor),
        )

    predictor.decode_candidates = decode_on_device
    state = predictor.init_state(str(first_frames(6)))
    predictor.add_new_points_or_box(state, 0, 1, points=[[198, 112]], labels=[1])
    predictor.add_new_points_or_box(state, 0, 2, box=[75, 65, 140, 200])
    DeviceTensor.reads.clear()
    frames = [f for f, _, _ in predictor.propagate_in_video(state)]

    assert frames == list(range(6))
    # frames 1-5 are tracked: one model pass per frame (batched) or per object and frame
    assert len(passes) == (5 if batch_objects else 10)
    assert len(DeviceTensor.reads) == len(passes), DeviceTensor.reads
    assert all(read.startswith("cpu at propagation.py") for read in DeviceTensor.reads), DeviceTensor.reads
