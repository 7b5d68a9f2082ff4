"""Record the official SAMURAI tracker's golden run for our ``samurai`` tracker's tests.

SAMURAI (github.com/yangchris11/samurai) is on GitHub only, which CI cannot reach; CI compares
our tracker against what this script writes to ``tests/golden/samurai/`` (format and inputs:
``tests/tracker_golden.py``). Check the reference out OUTSIDE this repository at the pinned
commit (``tracker_golden.SAMURAI_COMMIT``; its ``sam2`` fork must match
``tracker_golden.SAMURAI_TREE_SHA256``)::

    git clone https://github.com/yangchris11/samurai /tmp/ref/samurai
    git -C /tmp/ref/samurai checkout 76ba195984892b0d1e3db5d9c9f90bb62175680a
    pip install loguru   # imported by the fork's sam2_base.py

then, from the repository root, in the environment the tests use (same torch)::

    SAMURAI_REF_SRC=/tmp/ref/samurai python tools/golden/samurai.py

and commit ``tests/golden/samurai/``. Nothing of the reference is installed or edited: its fork
(``<checkout>/sam2``, package ``sam2``) goes on the ``PYTHONPATH`` of a subprocess
(``tests/upstream_ref.py:UpstreamJob``) that runs :func:`samurai_driver`:

* ``build_sam2_video_predictor(SAMURAI_CONFIG, ckpt, device="cpu",
  hydra_overrides_extra=SAMURAI_OVERRIDES)`` (official default ``apply_postprocessing=True``;
  image size 512, ``stable_frames_threshold=3``, the other SAMURAI values as in the official
  config), ``init_state(frames)``, ``add_new_points_or_box(box=BOX_XYXY, frame_idx=0,
  obj_id=0)``, ``propagate_in_video`` over the whole clip, fp32 (the official demo runs under
  CUDA fp16 autocast; here everything is fp32 on CPU);
* the model instance's ``_forward_sam_heads`` is wrapped (the original is called, its return
  values read), and so is ``track_step`` (only to know the frame index). The Kalman state lives
  on the model (single object): ``kf_mean`` / ``stable_frames`` are read after each call.

Per frame (``records.json`` ``frames[i]``):

* ``frame``; ``ious``: the predicted IoUs (3 on tracked frames, 1 on the prompted frame 0,
  which runs single-mask: a box is 2 points > ``multimask_max_pt_num``);
* ``object_score_logit``; ``chosen``: the candidate the reference kept (the ``k`` whose
  ``low_res_multimasks[0, k]`` equals the returned ``low_res_masks[0, 0]`` and whose IoU equals
  the returned best IoU; unique on every frame, else the script fails); ``argmax_iou``: the plain
  best-IoU candidate; ``motion_changed_choice``: ``chosen != argmax_iou``;
* ``kf_ious``: the motion IoUs of the 3 candidates against the Kalman prediction, as the
  reference's ``model.kf.compute_iou`` returned them (wrapped the same way); ``null`` on warm-up
  frames, where SAMURAI does not compute them;
* ``kf_mean``: the Kalman mean after the frame (8 floats, ``null`` before initialisation),
  ``stable_frames`` after the frame;
* ``best_iou_score``, ``kf_score``: what the reference stored in the frame's output
  (``output_dict[...][frame]``; ``null`` when absent);
* ``mask``: the output mask (``video_res_masks > 0``) at video resolution, COCO RLE.

``summary`` in the manifest: frames, absent frames (object score <= ``min_obj_score_logits``),
frames on the motion branch, frames where motion changed the choice, and ``margins`` (the
smallest distance of each kind of decision to its threshold or runner-up). The run is made twice and
the two records must be identical (the reference is deterministic on CPU). Takes ~4 min on 2
cores (both runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
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

NAME = "samurai"


def samurai_driver(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in the subprocess, under the official SAMURAI fork of ``sam2``."""
    import warnings

    import torch

    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        args["config"], args["checkpoint"], device="cpu", hydra_overrides_extra=args["overrides"]
    )
    calls: dict[int, list[dict[str, Any]]] = {}
    current = {"frame": None, "kf_ious": None}

    original_track_step = predictor.track_step

    def track_step(*a, **kw):
        current["frame"] = kw["frame_idx"]
        return original_track_step(*a, **kw)

    original_compute_iou = predictor.kf.compute_iou

    def compute_iou(*a, **kw):
        result = original_compute_iou(*a, **kw)
        current["kf_ious"] = [float(v) for v in result]
        return result

    original_heads = predictor._forward_sam_heads

    def forward_sam_heads(*a, **kw):
        current["kf_ious"] = None
        out = original_heads(*a, **kw)
        low_res_multimasks, _, ious, low_res_masks, _, _, object_score_logits, best_iou, kf_score = out
        m = low_res_multimasks.shape[1]
        chosen = [
            k
            for k in range(m)
            if torch.equal(low_res_multimasks[0, k], low_res_masks[0, 0]) and float(ious[0, k]) == float(best_iou.reshape(-1)[0])
        ]
        mean = predictor.kf_mean
        calls.setdefault(current["frame"], []).append(
            {
                "ious": [float(v) for v in ious[0]],
                "object_score_logit": float(object_score_logits.reshape(-1)[0]),
                "chosen_candidates": chosen,
                "argmax_iou": int(torch.argmax(ious[0])),
                "kf_ious": current["kf_ious"],
                "returned_best_iou": float(best_iou.reshape(-1)[0]),
                "returned_kf_score": None if kf_score is None else float(kf_score.reshape(-1)[0]),
                "kf_mean": None if mean is None else [float(v) for v in mean],
                "stable_frames": int(predictor.stable_frames),
            }
        )
        return out

    predictor.track_step = track_step
    predictor.kf.compute_iou = compute_iou
    predictor._forward_sam_heads = forward_sam_heads

    def scalar(value):
        return None if value is None else float(torch.as_tensor(value).reshape(-1)[0])

    masks: dict[int, torch.Tensor] = {}
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always")
        state = predictor.init_state(args["frames_dir"], offload_video_to_cpu=True)
        _, obj_ids, prompt_masks = predictor.add_new_points_or_box(state, frame_idx=0, obj_id=0, box=args["box"])
        assert list(obj_ids) == [0]
        stored = {}
        for frame_idx, _obj_ids, video_masks in predictor.propagate_in_video(state):
            masks[frame_idx] = (video_masks[0, 0] > 0).clone()
            out_dict = state["output_dict"]
            out = out_dict["cond_frame_outputs"].get(frame_idx, out_dict["non_cond_frame_outputs"].get(frame_idx))
            stored[frame_idx] = {"best_iou_score": scalar(out.get("best_iou_score")), "kf_score": scalar(out.get("kf_score"))}
    hole_skips = sum("Skipping the post-processing step" in str(w.message) for w in caught)
    return {
        "calls": calls,
        "masks": masks,
        "prompt_mask": (prompt_masks[0, 0] > 0).clone(),
        "stored": stored,
        "hole_fill_skips": hole_skips,
        "fill_hole_area": int(predictor.fill_hole_area),
        "settings": {k: getattr(predictor, k) for k in args["settings"]},
        "video_hw": [int(state["video_height"]), int(state["video_width"])],
    }


def records_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The reference's raw per-frame observations as the JSON records (see the docstring)."""
    frames = []
    for f in range(tg.NUM_FRAMES):
        calls = raw["calls"].get(f, [])
        assert len(calls) == 1, f"frame {f}: expected one SAM-heads call, got {len(calls)}"
        c = calls[0]
        assert len(c["chosen_candidates"]) == 1, f"frame {f}: chosen candidate is ambiguous: {c['chosen_candidates']}"
        chosen = c["chosen_candidates"][0]
        if c["kf_ious"] is not None:
            assert c["returned_kf_score"] == c["kf_ious"][chosen]
        frames.append(
            {
                "frame": f,
                "ious": c["ious"],
                "object_score_logit": c["object_score_logit"],
                "chosen": chosen,
                "argmax_iou": c["argmax_iou"],
                "motion_changed_choice": chosen != c["argmax_iou"],
                "kf_ious": c["kf_ious"],
                "kf_mean": c["kf_mean"],
                "stable_frames": c["stable_frames"],
                "best_iou_score": raw["stored"][f]["best_iou_score"],
                "kf_score": raw["stored"][f]["kf_score"],
                "mask": tg.rle_encode(raw["masks"][f].numpy()),
            }
        )
    return {"frames": frames}


def summary_of(records: dict[str, Any]) -> dict[str, Any]:
    frames = records["frames"]
    threshold = tg.SAMURAI_SETTINGS["min_obj_score_logits"]
    return {
        "frames": len(frames),
        "absent_frames": [r["frame"] for r in frames if r["object_score_logit"] <= threshold],
        "empty_mask_frames": [r["frame"] for r in frames if r["mask"]["counts"] == tg.rle_encode(np.zeros(r["mask"]["size"], bool))["counts"]],
        "motion_branch_frames": [r["frame"] for r in frames if r["kf_ious"] is not None],
        "motion_changed_choice_frames": [r["frame"] for r in frames if r["motion_changed_choice"]],
        "margins": margins_of(frames),
    }


def margins_of(frames: list[dict[str, Any]]) -> dict[str, float]:
    """Smallest distance of each recorded decision to its threshold or runner-up: how far a
    reimplementation's numbers may drift before it decides differently."""
    s = tg.SAMURAI_SETTINGS
    w = s["kf_score_weight"]
    tracked = frames[1:]
    choice = []
    for r in tracked:
        score = r["ious"] if r["kf_ious"] is None else [w * k + (1 - w) * i for k, i in zip(r["kf_ious"], r["ious"])]
        top = sorted(score, reverse=True)
        choice.append(top[0] - top[1])
    return {
        "candidate_choice": min(choice),
        "object_score_vs_min_obj_score_logits": min(abs(r["object_score_logit"] - s["min_obj_score_logits"]) for r in frames),
        "object_score_vs_memory_bank": min(abs(r["object_score_logit"] - s["memory_bank_obj_score_threshold"]) for r in tracked),
        "best_iou_vs_memory_bank": min(abs(r["best_iou_score"] - s["memory_bank_iou_threshold"]) for r in tracked),
        "best_iou_vs_stable_ious": min(abs(r["best_iou_score"] - s["stable_ious_threshold"]) for r in tracked),
        "kf_score_vs_memory_bank": min(
            abs(r["kf_score"] - s["memory_bank_kf_score_threshold"]) for r in tracked if r["kf_score"] not in (None, 0.0)
        ),
    }


def locate(src: str | None) -> Path:
    root = Path(src or __import__("os").environ.get(tg.SAMURAI_REF_SRC_ENV, "")).expanduser().resolve()
    pkg_root = root / "sam2"
    if not (pkg_root / "sam2" / "build_sam.py").is_file():
        sys.exit(f"{root} is not a SAMURAI checkout (set ${tg.SAMURAI_REF_SRC_ENV} or --ref-src)")
    digest = tg.tree_digest(pkg_root, "sam2")
    if digest != tg.SAMURAI_TREE_SHA256:
        sys.exit(f"{pkg_root}/sam2 tree digest {digest} != pinned {tg.SAMURAI_TREE_SHA256} (not SAMURAI@{tg.SAMURAI_COMMIT}?)")
    return pkg_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-src", default=None, help=f"SAMURAI checkout (default ${tg.SAMURAI_REF_SRC_ENV})")
    parser.add_argument("--out", type=Path, default=tg.golden_dir(NAME))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=2, help="official runs that must agree (determinism)")
    opts = parser.parse_args()
    pkg_root = locate(opts.ref_src)

    with tempfile.TemporaryDirectory(prefix="samurai-golden-") as tmp:
        frames = tg.make_frames(Path(tmp) / "frames")
        state = tg.state_dict(NAME)
        ckpt = Path(tmp) / "model.pt"
        torch.save({"model": state}, ckpt)
        args = {
            "config": tg.SAMURAI_CONFIG,
            "checkpoint": str(ckpt),
            "overrides": tg.SAMURAI_OVERRIDES,
            "frames_dir": str(frames),
            "box": list(tg.BOX_XYXY),
            "settings": list(tg.SAMURAI_SETTINGS),
        }
        runs = []
        for i in range(opts.runs):
            print(f"running official SAMURAI ({i + 1}/{opts.runs}) ...", flush=True)
            job = UpstreamJob(driver_script(samurai_driver), args, threads=opts.threads, timeout=1800.0, root=pkg_root)
            runs.append(job.result())
    raw = runs[0]
    records = records_of(raw)
    for other in runs[1:]:
        assert records_of(other) == records, "the official run is not deterministic: two runs differ"
    assert raw["video_hw"] == [tg.VIDEO_HEIGHT, tg.VIDEO_WIDTH], raw["video_hw"]
    assert raw["settings"] == tg.SAMURAI_SETTINGS, raw["settings"]
    assert raw["fill_hole_area"] == 8 and raw["hole_fill_skips"] > 0, "expected the official hole filling to be skipped on CPU"
    assert torch.equal(raw["prompt_mask"], raw["masks"][0])

    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    (out / tg.RECORDS).write_text(json.dumps(records, separators=(",", ":")) + "\n")
    summary = summary_of(records)
    manifest = {
        "reference": {
            "repo": tg.SAMURAI_REPO_URL,
            "commit": tg.SAMURAI_COMMIT,
            "package": "sam2 (the fork under sam2/)",
            "tree_sha256": tg.SAMURAI_TREE_SHA256,
        },
        "generated": {
            "by": "tools/golden/samurai.py",
            "command": f"{tg.SAMURAI_REF_SRC_ENV}=<checkout> python tools/golden/samurai.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {opts.threads} threads",
            "device": "cpu",
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
