"""Propagation speed and peak memory of SAM 2 and SAM2Long, printed as a table.

Each case (predictor mode x video length) runs in a fresh subprocess so its peak memory is its own:
CUDA max-allocated bytes on GPU, peak resident set size on CPU. ``state MB`` is what the session
still holds after propagation (stored memories and masks). Frames are generated on the fly
(moving shapes on a textured background), so the video length costs no input memory and the
numbers show what the trackers themselves keep.

Example (about 2 minutes on 2 CPU cores)::

    python benchmarks/propagation.py --image_size 256 --frames 8,32 --objects 2 --modes sam2,p1,p3

Modes: ``sam2`` (SAM2VideoPredictor), ``pN`` (SAM2Long with N pathways, outputs not stored).
Weights are random unless ``--checkpoint`` is given: speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from sam2.utils.frame_sources import FrameSource


class SyntheticVideo(FrameSource):
    """Deterministic procedural frames: textured background with moving ellipses."""

    kind = "synthetic"

    def __init__(self, num_frames: int, height: int = 480, width: int = 640) -> None:
        self.num_frames, self.height, self.width = num_frames, height, width
        rng = np.random.default_rng(0)
        self.background = rng.integers(0, 255, size=(height // 8, width // 8, 3), dtype=np.uint8)

    @property
    def frame_names(self) -> list[str]:
        return [f"{i:05d}" for i in range(self.num_frames)]

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def get(self, index: int) -> np.ndarray:
        frame = np.kron(self.background, np.ones((8, 8, 1), dtype=np.uint8))
        yy, xx = np.mgrid[0 : self.height, 0 : self.width]
        for k, color in enumerate(((255, 60, 60), (60, 255, 60), (60, 60, 255))):
            cx = self.width * (0.25 + 0.25 * k) + 40 * np.sin(0.1 * index + k)
            cy = self.height * 0.5 + 30 * np.cos(0.07 * index + k)
            inside = ((xx - cx) / 60) ** 2 + ((yy - cy) / 40) ** 2 <= 1
            frame[inside] = color
        return frame


def prompt_objects(predictor, state, video: FrameSource, count: int) -> None:
    """Give ``count`` box-shaped mask prompts on frame 0 (the benchmarks' objects)."""
    h, w = video.size
    for obj in range(count):
        mask = np.zeros((h, w), dtype=bool)
        x0 = int(w * (0.15 + 0.25 * obj))
        mask[h // 3 : 2 * h // 3, x0 : x0 + w // 6] = True
        predictor.add_new_mask(state, 0, obj + 1, mask)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024, "peak_rss"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss"


def _tensor_bytes(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable from nested dicts/lists/tuples."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, Mapping):  # dicts and the session's output-store views
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def run_case(args: argparse.Namespace) -> dict:
    """One mode on one video length, in this process."""
    from sam2.build_sam import build_sam2_video_predictor
    from sam2long import build_sam2long_video_predictor

    torch.manual_seed(0)
    device = torch.device(args.device)
    overrides = [f"++model.image_size={args.image_size}"]
    common = dict(ckpt_path=args.checkpoint, device=device, hydra_overrides_extra=overrides)
    if args.mode == "sam2":
        predictor = build_sam2_video_predictor(args.config, **common)
    else:
        predictor = build_sam2long_video_predictor(
            args.config, num_pathways=int(args.mode[1:]), store_outputs=False, **common
        )
    video = SyntheticVideo(args.num_frames)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        state = predictor.init_state(video)
        prompt_objects(predictor, state, video, args.objects)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        frames = 0
        for _ in predictor.propagate_in_video(state):
            frames += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak, kind = _peak_memory(device)
    state.pop("images")  # the frame loader, not tracking state
    state_mb = _tensor_bytes(state) / 2**20
    return {
        "mode": args.mode,
        "objects": args.objects,
        "frames": frames,
        "seconds": round(seconds, 2),
        "fps": round(frames / seconds, 2),
        "peak_mb": round(peak / 2**20, 1),
        "state_mb": round(state_mb, 2),
        "memory": kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--frames", default="16,64", help="comma-separated video lengths")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--modes", default="sam2,p1,p3")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--num_frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mode is not None:  # child process: one case
        print(json.dumps(run_case(args)))
        return

    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    )
    print(
        f"# {time.strftime('%Y-%m-%d')} {args.config} image_size={args.image_size} objects={args.objects} "
        f"device={args.device} ({device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    print(f"{'mode':>6} {'frames':>7} {'seconds':>8} {'fps':>7} {'peak MB':>9} {'state MB':>9}  memory")
    for mode in args.modes.split(","):
        for num_frames in (int(n) for n in args.frames.split(",")):
            cmd = [sys.executable, __file__, "--mode", mode, "--num_frames", str(num_frames)]
            for name in ("config", "image_size", "objects", "device"):
                cmd += [f"--{name}", str(getattr(args, name))]
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(
                f"{row['mode']:>6} {row['frames']:>7} {row['seconds']:>8} {row['fps']:>7} "
                f"{row['peak_mb']:>9} {row['state_mb']:>9}  {row['memory']}"
            )


if __name__ == "__main__":
    main()
