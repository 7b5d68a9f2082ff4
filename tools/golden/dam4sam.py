"""Record the official DAM4SAM tracker's golden run for our ``dam4sam`` tracker's tests.

DAM4SAM (github.com/jovanavidenovic/DAM4SAM) is on GitHub only, which CI cannot reach; CI
compares our tracker against what this script writes to ``tests/golden/dam4sam/`` (format and
inputs: ``tests/tracker_golden.py``). Check the reference out OUTSIDE this repository at the
pinned commit (``tracker_golden.DAM4SAM_COMMIT``; its ``.py``/``.yaml`` files must match
``tracker_golden.DAM4SAM_TREE_SHA256``) and install what its wrapper imports::

    git clone https://github.com/jovanavidenovic/DAM4SAM /tmp/ref/dam4sam
    git -C /tmp/ref/dam4sam checkout 9c954504b39ebca4c412f207be0787c26bfac85a
    pip install vot-toolkit==0.7.1 'attributee<0.1.10'   # the version of its requirements.txt (0.9 lacks RegionType)

then, from the repository root, in the environment the tests use (same torch)::

    DAM4SAM_REF_SRC=/tmp/ref/dam4sam python tools/golden/dam4sam.py

and commit ``tests/golden/dam4sam/``. Nothing of the reference is installed or edited: the
checkout goes on the ``PYTHONPATH`` of a subprocess (``tests/upstream_ref.py:UpstreamJob``; it
provides ``sam2`` (the fork), ``utils.utils`` and ``dam4sam_tracker``) that runs
:func:`dam4sam_driver`: the official ``DAM4SAMTracker("sam21pp-T")``, ``initialize(frame 0,
None, bbox=box_xywh())`` (it estimates a mask from the box, then ``add_new_mask``), then
``track(frame)`` for every later frame, fp32 on CPU.

Patches, all in the subprocess, none to the reference's files. The wrapper hard-codes CUDA:

1. ``torch.Tensor.cuda`` returns the tensor itself (the fork's ``sam2_base.py`` moves memory
   features with ``.cuda()``);
2. ``dam4sam_tracker.build_sam2_video_predictor`` (the name the wrapper calls, with
   ``device="cuda:0"`` and the checkpoint path of ``utils.determine_tracker``) is replaced by a
   function that calls the fork's builder with the same config, ``device="cpu"``, our random
   checkpoint and ``hydra_overrides_extra=DAM4SAM_OVERRIDES`` (image size 512); the default
   ``apply_postprocessing=True`` is kept;
3. during ``DAM4SAMTracker.init_state_tw`` only, ``torch.device`` returns the CPU device (it
   builds ``torch.device("cuda")`` for the state's devices and moves the ImageNet mean/std
   there); ``torch.cuda.empty_cache()`` in ``track`` is left alone (a no-op without CUDA);
4. ``DAM4SAMTracker._prepare_image`` returns, for the frame it is given (matched by file name),
   exactly the tensor the fork's own ``sam2.utils.misc.load_video_frames(frames, 512,
   offload_video_to_cpu=True, compute_device=cpu)`` produces: PIL resize to 512x512, /255,
   ImageNet mean/std. The wrapper resizes with torchvision instead; our engine feeds SAM 2's
   video loader tensors, so this isolates the tracker from the online wrapper's resize.

Spies (the original is always called and its result returned unchanged): ``track_step`` (for
the frame index), ``_forward_sam_heads`` (IoUs, object score, chosen candidate: the ``k`` whose
``low_res_multimasks[0, k]`` equals ``low_res_masks[0, 0]`` with the max IoU),
``add_to_drm``, ``estimate_mask_from_box``; and a ``sys.settrace`` hook on ``track`` that reads
its locals when it returns (``obj_sizes_ratio``, ``m_iou``, ``m_idx``, ``n_pixels``, and the
alternative box IoUs ``ious`` when the DRM test got that far).

Records (``records.json``): ``init_mask`` (RLE: the mask the wrapper estimated from the box)
and per frame ``frames[i]``:

* ``frame``; ``ious`` (3 predicted IoUs), ``object_score_logit``, ``chosen`` (``null`` on
  frame 0, initialised from the mask: no SAM-heads decision there);
* ``n_pixels_pos``: what the reference stored in the frame's output; ``obj_sizes_ratio``
  (``-1`` where the wrapper sets it so); ``m_iou``, ``m_idx``: the wrapper's view of the
  chosen mask; ``alt_box_ious``: box IoUs of the processed alternative masks (``null`` unless
  the first DRM condition held); ``added_to_drm``;
* ``mask``: the wrapper's output mask (``pred_mask``) at video resolution, COCO RLE.

``summary`` in the manifest: frames, absent frames (object score <= 0), DRM additions, and
``margins`` (the smallest distance of each kind of decision to its threshold). The run
is made twice and the two records must be identical. Takes ~2 min on 2 cores (both runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tracker_golden as tg  # noqa: E402
from upstream_ref import UpstreamJob, driver_script  # noqa: E402

NAME = "dam4sam"


def dam4sam_driver(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in the subprocess, under the official DAM4SAM checkout (wrapper + ``sam2`` fork)."""
    import sys
    import warnings
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    # patch 1: .cuda() is a no-op (memory features in sam2_base.py)
    torch.Tensor.cuda = lambda self, *a, **kw: self

    import dam4sam_tracker as dt

    from sam2.utils.misc import load_video_frames

    # patch 2: the builder the wrapper calls, on CPU with our checkpoint and image size
    official_build = dt.build_sam2_video_predictor

    def build_on_cpu(config_file, ckpt_path=None, device="cuda", **kw):
        assert config_file == args["config"], config_file
        return official_build(
            config_file, args["checkpoint"], device="cpu", hydra_overrides_extra=args["overrides"], **kw
        )

    dt.build_sam2_video_predictor = build_on_cpu

    # patch 3: torch.device("cuda") -> cpu while the wrapper builds its state
    official_init_state = dt.DAM4SAMTracker.init_state_tw

    def init_state_on_cpu(self):
        real_device = torch.device
        torch.device = lambda *a, **kw: real_device("cpu")
        try:
            return official_init_state(self)
        finally:
            torch.device = real_device

    dt.DAM4SAMTracker.init_state_tw = init_state_on_cpu

    # patch 4: the frames exactly as the fork's video loader prepares them
    frames_dir = Path(args["frames_dir"])
    names = sorted(p.name for p in frames_dir.glob("*.jpg"))
    images, _, _ = load_video_frames(
        str(frames_dir), args["image_size"], offload_video_to_cpu=True, compute_device=torch.device("cpu")
    )
    prepared = {name: images[i] for i, name in enumerate(names)}

    def prepare_image(self, img_pil):
        return prepared[Path(img_pil.filename).name].clone()

    dt.DAM4SAMTracker._prepare_image = prepare_image

    tracker = dt.DAM4SAMTracker(args["tracker_name"])
    predictor = tracker.predictor
    calls: dict[int, list[dict[str, Any]]] = {}
    current = {"frame": None}
    drm: list[int] = []
    estimated: list[np.ndarray] = []

    official_track_step = predictor.track_step

    def track_step(*a, **kw):
        current["frame"] = kw["frame_idx"]
        return official_track_step(*a, **kw)

    official_heads = predictor._forward_sam_heads

    def forward_sam_heads(*a, **kw):
        out = official_heads(*a, **kw)
        low_res_multimasks, _, ious, low_res_masks, _, _, object_score_logits = out[:7]
        best = float(ious[0].max())
        chosen = [
            k
            for k in range(low_res_multimasks.shape[1])
            if torch.equal(low_res_multimasks[0, k], low_res_masks[0, 0]) and float(ious[0, k]) == best
        ]
        calls.setdefault(current["frame"], []).append(
            {
                "ious": [float(v) for v in ious[0]],
                "object_score_logit": float(object_score_logits.reshape(-1)[0]),
                "chosen_candidates": chosen,
                "multimask": bool(kw.get("multimask_output", False)),
            }
        )
        return out

    official_add_to_drm = predictor.add_to_drm

    def add_to_drm(*a, **kw):
        drm.append(int(kw["frame_idx"]))
        return official_add_to_drm(*a, **kw)

    official_estimate = tracker.estimate_mask_from_box

    def estimate_mask_from_box(bbox):
        mask = official_estimate(bbox)
        estimated.append(np.array(mask) > 0)
        return mask

    predictor.track_step = track_step
    predictor._forward_sam_heads = forward_sam_heads
    predictor.add_to_drm = add_to_drm
    tracker.estimate_mask_from_box = estimate_mask_from_box

    track_code = type(tracker).track.__wrapped__.__code__
    seen: dict[str, Any] = {}
    wanted = ("obj_sizes_ratio", "m_iou", "m_idx", "n_pixels", "ious")

    def local_trace(frame, event, arg):
        if event == "return":
            seen.update({k: frame.f_locals.get(k) for k in wanted})
        return local_trace

    def global_trace(frame, event, arg):
        return local_trace if frame.f_code is track_code else None

    def plain(value):
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        return float(value)

    frames = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, name in enumerate(names):
            image = Image.open(frames_dir / name)
            if i == 0:
                out = tracker.initialize(image, None, bbox=args["box_xywh"])
                locals_ = {}
            else:
                seen.clear()
                sys.settrace(global_trace)
                try:
                    out = tracker.track(image)
                finally:
                    sys.settrace(None)
                locals_ = dict(seen)
            output_dict = tracker.inference_state["output_dict"]
            stored = output_dict["non_cond_frame_outputs"].get(i, output_dict["cond_frame_outputs"].get(i))
            frames.append(
                {
                    "mask": np.asarray(out["pred_mask"]).astype(bool),
                    "n_pixels_pos": None if stored is None or "n_pixels_pos" not in stored else int(np.asarray(stored["n_pixels_pos"]).sum()),
                    "obj_sizes_ratio": plain(locals_.get("obj_sizes_ratio")),
                    "m_iou": plain(locals_.get("m_iou")),
                    "m_idx": None if locals_.get("m_idx") is None else int(locals_["m_idx"]),
                    "n_pixels": None if locals_.get("n_pixels") is None else int(locals_["n_pixels"]),
                    "alt_box_ious": plain(locals_.get("ious")),
                }
            )
    hole_skips = sum("Skipping the post-processing step" in str(w.message) for w in caught)
    return {
        "calls": calls,
        "frames": frames,
        "drm": drm,
        "init_mask": estimated,
        "hole_fill_skips": hole_skips,
        "fill_hole_area": int(predictor.fill_hole_area),
        "image_size": int(predictor.image_size),
        "video_hw": [int(tracker.img_height), int(tracker.img_width)],
    }


def records_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The reference's raw per-frame observations as the JSON records (see the docstring)."""
    assert len(raw["init_mask"]) == 1, "expected one mask estimated from the box"
    frames = []
    for f, fr in enumerate(raw["frames"]):
        record: dict[str, Any] = {"frame": f}
        if f == 0:
            record.update({"ious": None, "object_score_logit": None, "chosen": None})
        else:
            calls = raw["calls"].get(f, [])
            assert len(calls) == 1 and calls[0]["multimask"], f"frame {f}: expected one multimask SAM-heads call, got {calls}"
            c = calls[0]
            assert len(c["chosen_candidates"]) == 1, f"frame {f}: chosen candidate is ambiguous: {c['chosen_candidates']}"
            record.update({"ious": c["ious"], "object_score_logit": c["object_score_logit"], "chosen": c["chosen_candidates"][0]})
            assert fr["m_idx"] == record["chosen"], (f, fr["m_idx"], record["chosen"])
        record.update({k: fr[k] for k in ("n_pixels_pos", "obj_sizes_ratio", "m_iou", "m_idx", "alt_box_ious")})
        record["added_to_drm"] = f in raw["drm"]
        record["mask"] = tg.rle_encode(fr["mask"])
        frames.append(record)
    return {"init_mask": tg.rle_encode(raw["init_mask"][0]), "frames": frames}


def summary_of(records: dict[str, Any]) -> dict[str, Any]:
    frames = records["frames"]
    return {
        "frames": len(frames),
        "absent_frames": [r["frame"] for r in frames if r["object_score_logit"] is not None and r["object_score_logit"] <= 0],
        "empty_mask_frames": [r["frame"] for r in frames if not tg.rle_decode(r["mask"]).any()],
        "drm_additions": [r["frame"] for r in frames if r["added_to_drm"]],
        "drm_candidates": [r["frame"] for r in frames if r["alt_box_ious"] is not None],
        "margins": margins_of(frames),
    }


def margins_of(frames: list[dict[str, Any]]) -> dict[str, float]:
    """Smallest distance of each recorded decision to its threshold or runner-up: how far a
    reimplementation's numbers may drift before it decides differently."""
    tracked = frames[1:]
    ratios = [r["obj_sizes_ratio"] for r in tracked if r["obj_sizes_ratio"] is not None and r["obj_sizes_ratio"] >= 0]
    return {
        "candidate_choice": min(sorted(r["ious"])[-1] - sorted(r["ious"])[-2] for r in tracked),
        "object_score_vs_0": min(abs(r["object_score_logit"]) for r in tracked),
        "chosen_iou_vs_0.8": min(abs(r["m_iou"] - 0.8) for r in tracked),
        "size_ratio_vs_0.8_1.2": min(min(abs(x - 0.8), abs(x - 1.2)) for x in ratios),
        "alt_box_iou_vs_0.7": min(abs(min(r["alt_box_ious"]) - 0.7) for r in tracked if r["alt_box_ious"]),
    }


def locate(src: str | None) -> Path:
    root = Path(src or os.environ.get(tg.DAM4SAM_REF_SRC_ENV, "")).expanduser().resolve()
    if not (root / "dam4sam_tracker.py").is_file() or not (root / "sam2" / "build_sam.py").is_file():
        sys.exit(f"{root} is not a DAM4SAM checkout (set ${tg.DAM4SAM_REF_SRC_ENV} or --ref-src)")
    digest = tg.tree_digest(root)
    if digest != tg.DAM4SAM_TREE_SHA256:
        sys.exit(f"{root} tree digest {digest} != pinned {tg.DAM4SAM_TREE_SHA256} (not DAM4SAM@{tg.DAM4SAM_COMMIT}?)")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-src", default=None, help=f"DAM4SAM checkout (default ${tg.DAM4SAM_REF_SRC_ENV})")
    parser.add_argument("--out", type=Path, default=tg.golden_dir(NAME))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=2, help="official runs that must agree (determinism)")
    opts = parser.parse_args()
    root = locate(opts.ref_src)

    with tempfile.TemporaryDirectory(prefix="dam4sam-golden-") as tmp:
        frames = tg.make_frames(Path(tmp) / "frames")
        state = tg.state_dict(NAME)
        ckpt = Path(tmp) / "model.pt"
        torch.save({"model": state}, ckpt)
        args = {
            "config": tg.DAM4SAM_CONFIG,
            "tracker_name": tg.DAM4SAM_TRACKER_NAME,
            "checkpoint": str(ckpt),
            "overrides": tg.DAM4SAM_OVERRIDES,
            "frames_dir": str(frames),
            "image_size": tg.IMAGE_SIZE,
            "box_xywh": tg.box_xywh(),
        }
        runs = []
        for i in range(opts.runs):
            print(f"running official DAM4SAM ({i + 1}/{opts.runs}) ...", flush=True)
            job = UpstreamJob(driver_script(dam4sam_driver), args, threads=opts.threads, timeout=1800.0, root=root)
            runs.append(job.result())
    raw = runs[0]
    records = records_of(raw)
    for other in runs[1:]:
        assert records_of(other) == records, "the official run is not deterministic: two runs differ"
    assert raw["video_hw"] == [tg.VIDEO_HEIGHT, tg.VIDEO_WIDTH], raw["video_hw"]
    assert raw["image_size"] == tg.IMAGE_SIZE, raw["image_size"]
    assert raw["fill_hole_area"] == 8 and raw["hole_fill_skips"] > 0, "expected the official hole filling to be skipped on CPU"

    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    (out / tg.RECORDS).write_text(json.dumps(records, separators=(",", ":")) + "\n")
    summary = summary_of(records)
    manifest = {
        "reference": {
            "repo": tg.DAM4SAM_REPO_URL,
            "commit": tg.DAM4SAM_COMMIT,
            "package": "dam4sam_tracker.DAM4SAMTracker with the sam2 fork of the same checkout",
            "tree_sha256": tg.DAM4SAM_TREE_SHA256,
        },
        "generated": {
            "by": "tools/golden/dam4sam.py",
            "command": f"{tg.DAM4SAM_REF_SRC_ENV}=<checkout> python tools/golden/dam4sam.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {opts.threads} threads",
            "device": "cpu (patched, see the generator's docstring)",
            "dtype": "float32",
            "deterministic_runs": opts.runs,
            "hole_fill_skipped_warnings": raw["hole_fill_skips"],
        },
        "state_dict_sha256": tg.state_dict_sha256(state),
        "inputs": tg.describe_inputs(NAME),
        "summary": summary,
    }
    (out / tg.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(summary))
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>9} {p.relative_to(REPO) if p.is_relative_to(REPO) else p}")


if __name__ == "__main__":
    main()
