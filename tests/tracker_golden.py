"""Inputs and golden outputs of the official SAMURAI and DAM4SAM trackers.

Both references are on GitHub only, which CI cannot reach, so ``tools/golden/samurai.py`` and
``tools/golden/dam4sam.py`` ran them once, by hand, on the inputs defined here and recorded what
they did frame by frame in ``tests/golden/samurai/`` and ``tests/golden/dam4sam/``. Tests of our
``samurai`` / ``dam4sam`` trackers import the SAME inputs from this module and compare against
:func:`load`. Change an input here and the goldens must be regenerated (the manifest records
the inputs they were made with; ``tests/test_tracker_golden.py`` checks they agree).

Common inputs (both trackers):

* model: SAM 2.1 tiny (:data:`CONFIG` in our package; the references use their own copies of
  the config, :data:`SAMURAI_CONFIG` and :data:`DAM4SAM_CONFIG`), at :data:`IMAGE_SIZE` px
  (hydra override :data:`OVERRIDES`), fp32 on CPU, seeded random weights from
  ``tests/conftest.py:checkpoint_state_dict`` (:func:`state_dict`), with a few output layers
  retuned per tracker (:class:`Weights`, :data:`WEIGHTS`) so that the interesting branches run
  on a short clip (absent frames, motion overriding the best IoU, DRM additions). The forks'
  tiny configs equal ours but for their tracker keys (SAMURAI: ``samurai_mode`` ... ; DAM4SAM:
  ``multimask_max_pt_num: 3``, ``add_all_frames_to_correct_as_cond``,
  ``memory_temporal_stride_for_eval: 5``, ``non_overlap_masks: false``,
  ``max_cond_frames_in_attn: 4``) and RoPE ``feat_sizes: [32, 32]`` (ours: 64; at 512 px both
  end up 32x32, the tables are recomputed for the actual size);
* frames: :data:`NUM_FRAMES` JPEGs written by :func:`make_frames`. Only 8 bedroom frames are
  committed (``tests/assets/bedroom``), so the clip plays them back and forth
  (:data:`FRAME_SOURCES`; byte copies, so every frame decodes exactly like the asset);
* prompt: one object (id 0), the box :data:`BOX_XYXY` on frame 0 in video pixels (x0, y0, x1, y1).
  SAMURAI gets it as ``add_new_points_or_box(box=...)``; DAM4SAM's wrapper takes
  ``[x, y, w, h]`` (:func:`box_xywh`) and turns it back into the same corners.

The official builders run with their default ``apply_postprocessing=True``, i.e. with the
overrides :data:`POSTPROCESSING`; ``fill_hole_area=8`` among them is a no-op there: on CPU the
hole filling fails (SAMURAI's fork has no ``sam2._C``; DAM4SAM's committed ``_C.so`` needs the
CUDA 12 runtime to load, and its kernel asserts CUDA inputs anyway) and the official code skips
it with a warning, so our side must run with ``fill_hole_area=0`` (:data:`OUR_FILL_HOLE_AREA`).
The generators assert the skip happened.

Records (``records.json`` in each folder, read with :func:`load`): ``{"frames": [...]}``, one dict
per frame in order, floats exactly as the reference computed them (``float(tensor)``), the
output mask at video resolution as a COCO RLE (``pycocotools``; :func:`rle_encode`). See the
generators' docstrings for the fields of each tracker.

Precision: each golden was recorded twice with identical records (the references are
deterministic on CPU), with 2 torch threads. Rerun with 1 thread, every decision (chosen
candidate, absent frames, Kalman warm-up, DRM additions) is the same, but floats move: object
scores up to ~1e-3 (the object-score head has a gain of 100-200 here), SAMURAI's motion IoUs
~1e-3 (a box edge moved by one pixel), predicted IoUs ~3e-5, masks by <= 2 pixels. Compare with
tolerances of that order; the manifests' ``summary.margins`` say how close each decision is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TESTS_DIR = Path(__file__).resolve().parent
GOLDEN_ROOT = TESTS_DIR / "golden"
BEDROOM_DIR = TESTS_DIR / "assets" / "bedroom"
MANIFEST = "manifest.json"
RECORDS = "records.json"
NAMES = ("samurai", "dam4sam")

# --- references (GitHub only) -------------------------------------------------------------
SAMURAI_REPO_URL = "https://github.com/yangchris11/samurai"
SAMURAI_COMMIT = "76ba195984892b0d1e3db5d9c9f90bb62175680a"
SAMURAI_REF_SRC_ENV = "SAMURAI_REF_SRC"  # the checkout's root (holds sam2/sam2/ and scripts/)
# tree_digest(<checkout>/sam2, "sam2"): the fork's package at SAMURAI_COMMIT
SAMURAI_TREE_SHA256 = "a99dd25ad409d76e010f43c6cef59a3aac1837203ea7a6719a55f96dce8af0bf"
DAM4SAM_REPO_URL = "https://github.com/jovanavidenovic/DAM4SAM"
DAM4SAM_COMMIT = "9c954504b39ebca4c412f207be0787c26bfac85a"
DAM4SAM_REF_SRC_ENV = "DAM4SAM_REF_SRC"  # the checkout's root (holds dam4sam_tracker.py)
# tree_digest(<checkout>): the wrapper, utils/ and the sam2 fork at DAM4SAM_COMMIT
DAM4SAM_TREE_SHA256 = "d5afbc519939169619c17aaa0bc73db0730bf661a4928064cec158463f620ea3"

# --- model --------------------------------------------------------------------------------
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"  # ours: names the keys and shapes of the weights
SAMURAI_CONFIG = "configs/samurai/sam2.1_hiera_t.yaml"  # SAMURAI's fork
DAM4SAM_CONFIG = "sam21pp_hiera_t.yaml"  # DAM4SAM's fork (tracker name "sam21pp-T")
DAM4SAM_TRACKER_NAME = "sam21pp-T"
IMAGE_SIZE = 512
OVERRIDES = [f"++model.image_size={IMAGE_SIZE}"]
# what build_sam2_video_predictor(apply_postprocessing=True) adds in both forks
POSTPROCESSING = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
]
OUR_FILL_HOLE_AREA = 0  # the official hole filling is skipped on CPU (see the module docstring)

# SAMURAI's settings: those of configs/samurai/sam2.1_hiera_t.yaml, except a short warm-up so the
# Kalman/motion branch runs on most frames of the clip (official value: 15)
SAMURAI_STABLE_FRAMES_THRESHOLD = 3
SAMURAI_OVERRIDES = [*OVERRIDES, f"++model.stable_frames_threshold={SAMURAI_STABLE_FRAMES_THRESHOLD}"]
SAMURAI_SETTINGS = {
    "samurai_mode": True,
    "stable_frames_threshold": SAMURAI_STABLE_FRAMES_THRESHOLD,
    "stable_ious_threshold": 0.3,
    "min_obj_score_logits": -1.0,
    "kf_score_weight": 0.25,
    "memory_bank_iou_threshold": 0.5,
    "memory_bank_obj_score_threshold": 0.0,
    "memory_bank_kf_score_threshold": 0.0,
}
DAM4SAM_OVERRIDES = list(OVERRIDES)

# --- clip and prompt ----------------------------------------------------------------------
FRAME_SOURCES = (0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 7, 6, 5)
NUM_FRAMES = len(FRAME_SOURCES)
VIDEO_HEIGHT, VIDEO_WIDTH = 270, 480
BOX_XYXY = (75.0, 65.0, 140.0, 200.0)  # the boy of examples/bedroom_prompts.json


@dataclass(frozen=True)
class Weights:
    """Seeded random weights of one golden run, with a few output layers retuned (see
    :func:`state_dict`) so that a short clip exercises the trackers' branches.

    With random weights the IoU and object-score heads barely depend on the input, and every
    candidate mask is a speckle over the whole frame (boxes of the whole frame: no motion cue,
    no distractor cue). So:

    * the two heads' last-layer weights are multiplied by a gain (their outputs then move from
      frame to frame) and their biases set;
    * ``smooth_masks``: the mask decoder's two transposed convolutions (``output_upscaling.0``
      and ``.3``) get the same kernel at all 2x2 taps (twice the tap mean: no checkerboard), and
      the high-resolution skip features (``conv_s0``, ``conv_s1``) are scaled by
      ``high_res_scale`` (small, not zero: the path still counts); candidate masks become
      blobs with boxes of their own;
    * ``mask_gain``: the hypernetwork MLPs' last layers (which turn the mask tokens into the
      per-mask weights over the upscaled embedding) are multiplied by it, i.e. every mask logit.
      The blobs' logits are shallow (|logit| < 1) otherwise, and far from saturating the memory
      encoder's sigmoid: a reimplementation's float32 rounding, grown through the bf16-stored
      memories, then moves their boundary by a fraction of a pixel (found by trial on the
      SAMURAI golden, together with a smaller ``high_res_scale``: at 0.1 even the prompted
      frame's mask differs from the official one by a few pixels).

    The mask decoder itself is checked elsewhere (``tests/test_parity_*``); these goldens are
    about the trackers' logic.
    """

    seed: int
    obj_score_bias: float  # object-score head: output bias (conftest.set_object_score_bias)
    obj_score_gain: float = 1.0  # ... and factor on its last-layer weight
    iou_bias: tuple[float, ...] | None = None  # IoU head: last-layer bias (4 tokens), None: random
    iou_gain: float = 1.0  # ... and factor on its last-layer weight
    smooth_masks: bool = False
    high_res_scale: float = 1.0  # factor on conv_s0 / conv_s1 (weight and bias)
    mask_gain: float = 1.0  # factor on the hypernetwork MLPs' last layers (weight and bias): mask logits

    def describe(self) -> dict[str, Any]:
        fields = asdict(self)
        if self.mask_gain == 1.0:  # added after the DAM4SAM golden: left out at its no-op default
            del fields["mask_gain"]
        return {
            "config": CONFIG,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()},
            "by": "tests/tracker_golden.py:state_dict (tests/conftest.py:checkpoint_state_dict)",
        }


# Tuned by hand on the official runs (tools/golden/*.py print a summary):
# SAMURAI: one absent frame (object score <= -1), present frames below the memory bank's
#   object-score threshold 0, an empty chosen mask during the warm-up (a [0, 0, 0, 0] box into
#   the Kalman filter), and the motion term overriding the best predicted IoU on four frames;
#   every chosen IoU is clear of the memory bank's 0.5 (thresholds near it made the run hinge
#   on 1e-4 differences). mask_gain 8 and high_res_scale 0.005: with shallow mask logits
#   (gain 1, scale 0.02) a reimplementation's float32 rounding, grown through the bf16 memories,
#   flipped ~1% of a frame's mask pixels (mask IoU 0.99 against the official run); now >= 0.995;
# DAM4SAM: two absent frames (object score <= 0) and two frames added to the DRM.
# The manifests' "summary" lists these frames and the smallest margin of each decision.
WEIGHTS = {
    "samurai": Weights(
        seed=0,
        obj_score_bias=80.8,
        obj_score_gain=200.0,
        iou_bias=(-64.3, 33.5, -34.6, 20.735),
        iou_gain=50.0,
        smooth_masks=True,
        high_res_scale=0.005,
        mask_gain=8.0,
    ),
    "dam4sam": Weights(
        seed=0,
        obj_score_bias=41.01,
        obj_score_gain=100.0,
        iou_bias=(1.5, 1.0, 2.5, 1.0),
        smooth_masks=True,
        high_res_scale=0.02,
    ),
}

OBJ_SCORE_HEAD_LAST = "sam_mask_decoder.pred_obj_score_head.layers.2"
IOU_HEAD_LAST = "sam_mask_decoder.iou_prediction_head.layers.2"
MASK_UPSCALE_FIRST = "sam_mask_decoder.output_upscaling.0"
MASK_UPSCALE_LAST = "sam_mask_decoder.output_upscaling.3"
HYPERNETWORK_PREFIX = "sam_mask_decoder.output_hypernetworks_mlps."
HIGH_RES_CONVS = ("sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")


def box_xywh() -> list[float]:
    """:data:`BOX_XYXY` as DAM4SAM's ``[x, y, w, h]``."""
    x0, y0, x1, y1 = BOX_XYXY
    return [x0, y0, x1 - x0, y1 - y0]


def state_dict(name: str) -> dict[str, torch.Tensor]:
    """The weights of golden run ``name`` (save as ``{"model": ...}`` for either side)."""
    from conftest import checkpoint_state_dict

    w = WEIGHTS[name]
    sd = checkpoint_state_dict(CONFIG, w.seed, w.obj_score_bias)
    sd[f"{OBJ_SCORE_HEAD_LAST}.weight"] *= w.obj_score_gain
    sd[f"{IOU_HEAD_LAST}.weight"] *= w.iou_gain
    if w.iou_bias is not None:
        sd[f"{IOU_HEAD_LAST}.bias"] = torch.tensor(w.iou_bias, dtype=torch.float32)
    if w.smooth_masks:
        for layer in (MASK_UPSCALE_FIRST, MASK_UPSCALE_LAST):
            kernel = sd[f"{layer}.weight"]
            sd[f"{layer}.weight"] = (2.0 * kernel.mean(dim=(2, 3), keepdim=True)).expand_as(kernel).contiguous()
    for layer in HIGH_RES_CONVS:
        sd[f"{layer}.weight"] *= w.high_res_scale
        sd[f"{layer}.bias"] *= w.high_res_scale
    if w.mask_gain != 1.0:
        for key in [k for k in sd if k.startswith(HYPERNETWORK_PREFIX) and ".layers.2." in k]:
            sd[key] = sd[key] * w.mask_gain
    return sd


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in key order."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_frames(out: Path) -> Path:
    """Write the clip into the folder ``out`` (``00000.jpg`` ...: byte copies of the assets)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(FRAME_SOURCES):
        (out / f"{i:05d}.jpg").write_bytes((BEDROOM_DIR / f"{src:05d}.jpg").read_bytes())
    return out


def frames_sha256() -> list[str]:
    """sha256 of each frame of the clip, in order."""
    return [hashlib.sha256((BEDROOM_DIR / f"{s:05d}.jpg").read_bytes()).hexdigest() for s in FRAME_SOURCES]


def describe_inputs(name: str) -> dict[str, Any]:
    """What a golden run of ``name`` was made from (stored in its manifest, checked by the tests)."""
    common = {
        "weights": WEIGHTS[name].describe(),
        "image_size": IMAGE_SIZE,
        "frame_sources": list(FRAME_SOURCES),
        "frames_sha256": frames_sha256(),
        "video_hw": [VIDEO_HEIGHT, VIDEO_WIDTH],
        "box_xyxy": list(BOX_XYXY),
        "postprocessing": list(POSTPROCESSING),
    }
    if name == "samurai":
        return {**common, "config": SAMURAI_CONFIG, "overrides": list(SAMURAI_OVERRIDES), "settings": dict(SAMURAI_SETTINGS)}
    if name == "dam4sam":
        return {
            **common,
            "config": DAM4SAM_CONFIG,
            "tracker_name": DAM4SAM_TRACKER_NAME,
            "overrides": list(DAM4SAM_OVERRIDES),
            "box_xywh": box_xywh(),
        }
    raise KeyError(name)


# --- masks as RLE -------------------------------------------------------------------------
def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE (``{"size": [h, w], "counts": str}``) of a 2-d boolean mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: an ``(h, w)`` bool array."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}).astype(bool)


# --- loading ------------------------------------------------------------------------------
@dataclass
class Golden:
    """One recorded official run: ``frames[i]`` is frame ``i``'s record (its ``"mask"`` RLE
    replaced by ``None``; the decoded masks are ``masks[i]``, ``(NUM_FRAMES, H, W)`` bool);
    ``extra`` holds the decoded top-level masks other than per frame (DAM4SAM: ``"init_mask"``)."""

    manifest: dict[str, Any]
    frames: list[dict[str, Any]]
    masks: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def golden_dir(name: str) -> Path:
    if name not in NAMES:
        raise KeyError(f"unknown golden {name!r} (have {NAMES})")
    return GOLDEN_ROOT / name


def load(name: str) -> Golden:
    """The golden run ``name`` (``"samurai"`` or ``"dam4sam"``) with its masks decoded."""
    folder = golden_dir(name)
    manifest = json.loads((folder / MANIFEST).read_text())
    data = json.loads((folder / RECORDS).read_text())
    frames, masks = [], []
    for record in data["frames"]:
        masks.append(rle_decode(record["mask"]))
        frames.append({**record, "mask": None})
    extra = {key: rle_decode(value) for key, value in data.items() if key != "frames"}
    return Golden(manifest=manifest, frames=frames, masks=np.stack(masks), extra=extra)


# --- reference trees ----------------------------------------------------------------------
def tree_digest(root: Path, folder: str = ".") -> str:
    """sha256 over (relative path, sha256 of contents) of the ``.py``/``.yaml`` files under
    ``root/folder`` (paths relative to ``root``): identifies the pinned reference code."""
    root = Path(root)
    h = hashlib.sha256()
    files = sorted(p for p in (root / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml"))
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()
