"""Long videos at flat memory: speed, peak memory and disk spill of SAM 2 and SAM2Long, by video length.

Every case (tracker x video length) runs in a fresh process with **default arguments**:
``init_state(video)`` and ``propagate_in_video(state)``, two objects prompted on frame 0, frames
generated on the fly (moving shapes on a textured background, :class:`propagation.SyntheticVideo`).
Reported per case: frames/s, peak RSS (CPU) or peak allocated VRAM (CUDA), what the session's output
store kept in memory and spilled to disk, and the resident memory sampled along the video, which is
drawn as a PNG plot (memory vs frames processed). Target: peak memory at 10,000 frames <= 1.1x that at
1,000.

Example (CPU, tiny model, 256 px)::

    python benchmarks/long_video.py --frames 1000,2500,5000,10000 --modes sam2,p3 --out long_video.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sam2.precision import add_dtype_argument, resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from propagation import SyntheticVideo, prompt_objects  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _memory(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss_bytes()


def run_case(args: argparse.Namespace) -> dict:
    """One tracker on one video length, in this process, with default arguments."""
    from sam2.build_sam import build_sam2_video_predictor
    from sam2long import build_sam2long_video_predictor

    device = torch.device(args.device)
    common = dict(
        ckpt_path=args.checkpoint,
        device=device,
        hydra_overrides_extra=[f"++model.image_size={args.image_size}"],
        dtype=args.dtype,
    )
    if args.mode == "sam2":
        predictor = build_sam2_video_predictor(args.config, **common)
    else:
        predictor = build_sam2long_video_predictor(args.config, num_pathways=int(args.mode[1:]), **common)
    video = SyntheticVideo(args.num_frames, height=args.height, width=args.width)
    every = max(1, args.num_frames // 50)
    samples: list[tuple[int, int]] = []
    with torch.inference_mode():
        state = predictor.init_state(video)
        prompt_objects(predictor, state, video, 2)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        frames = 0
        for _ in predictor.propagate_in_video(state):
            frames += 1
            if frames % every == 0:
                samples.append((frames, _memory(device)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes()
    store = state["output_store"].stats
    return {
        "mode": args.mode,
        "frames": frames,
        "seconds": round(seconds, 1),
        "fps": round(frames / seconds, 2),
        "peak_mb": round(peak / 2**20, 1),
        "memory": "cuda_max_allocated" if device.type == "cuda" else "peak_rss",
        "store_ram_mb": round(store.ram_bytes / 2**20, 1),
        "spilled_mb": round(store.disk_bytes / 2**20, 1),
        "spilled_entries": store.disk_entries,
        "samples": samples,
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Memory (MB) vs frames processed, one line per case, drawn with OpenCV."""
    width, height, left, right, top, bottom = 1000, 560, 80, 230, 50, 60
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    max_x = max(max(f for f, _ in r["samples"]) for r in rows if r["samples"])
    values = [m / 2**20 for r in rows for _, m in r["samples"]]
    low, high = 0.0, max(values) * 1.1 if values else 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float, y: float) -> tuple[int, int]:
        return int(left + x / max_x * plot_w), int(top + (1 - (y - low) / (high - low)) * plot_h)

    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (220, 220, 220)
    for tick in np.linspace(low, high, 6):
        x0, y = px(0, tick)
        cv2.line(canvas, (x0, y), (left + plot_w, y), grey, 1)
        cv2.putText(canvas, f"{tick:.0f}", (10, y + 5), font, 0.45, black, 1, cv2.LINE_AA)
    for tick in np.linspace(0, max_x, 6):
        x, y0 = px(tick, low)
        cv2.putText(canvas, f"{tick:.0f}", (x - 15, y0 + 20), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (left + plot_w, top + plot_h), black, 1)
    cv2.putText(
        canvas, "frames processed", (left + plot_w // 2 - 80, height - 15), font, 0.55, black, 1, cv2.LINE_AA
    )
    cv2.putText(canvas, f"MB  {title}", (10, top - 20), font, 0.5, black, 1, cv2.LINE_AA)
    colours = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]
    for index, row in enumerate(rows):
        colour = colours[index % len(colours)]
        points = np.array([px(f, m / 2**20) for f, m in row["samples"]], dtype=np.int32)
        if len(points) > 1:
            cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
        y = top + 15 + 22 * index
        cv2.line(canvas, (left + plot_w + 10, y - 5), (left + plot_w + 35, y - 5), colour, 2)
        label = f"{row['mode']} N={row['frames']}"
        cv2.putText(canvas, label, (left + plot_w + 42, y), font, 0.45, black, 1, cv2.LINE_AA)
    ok, buffer = cv2.imencode(".png", canvas)
    if not ok:
        raise OSError("PNG encoding failed")
    path.write_bytes(buffer.tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--height", type=int, default=272, help="frame height (a multiple of 8)")
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--frames", default="1000,2500,5000,10000", help="comma-separated video lengths")
    parser.add_argument("--modes", default="sam2,p3", help="sam2 and/or pN (SAM2Long with N pathways)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="long_video.png", help="PNG plot of memory vs frames")
    add_dtype_argument(parser)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--num_frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mode is not None:  # child process: one case
        print(json.dumps(run_case(args)))
        return

    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    )
    header = (
        f"{time.strftime('%Y-%m-%d')} | python {' '.join(sys.argv)} | {args.config} {args.image_size}px, "
        f"2 objects, {args.device} ({device_name}, {os.cpu_count()} cores, torch {torch.__version__}), "
        f"{resolve_precision(args.dtype, args.device).name}"
    )
    print(f"# {header}")
    print(
        f"{'mode':>5} {'frames':>7} {'seconds':>8} {'fps':>6} {'peak MB':>8} {'store MB':>9} {'spilled MB':>11}"
    )
    rows = []
    for mode in args.modes.split(","):
        for num_frames in (int(n) for n in args.frames.split(",")):
            cmd = [sys.executable, __file__, "--mode", mode, "--num_frames", str(num_frames)]
            for name in ("config", "image_size", "height", "width", "device", "dtype"):
                cmd += [f"--{name}", str(getattr(args, name))]
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['mode']:>5} {row['frames']:>7} {row['seconds']:>8} {row['fps']:>6} {row['peak_mb']:>8} "
                f"{row['store_ram_mb']:>9} {row['spilled_mb']:>11}",
                flush=True,
            )
    for mode in args.modes.split(","):
        cases = [r for r in rows if r["mode"] == mode]
        if len(cases) > 1:
            ratio = cases[-1]["peak_mb"] / cases[0]["peak_mb"]
            print(
                f"# {mode}: peak memory at {cases[-1]['frames']} frames / at {cases[0]['frames']} = {ratio:.3f}"
            )
    plot(rows, Path(args.out), header.split("|")[2].strip())
    Path(args.out).with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(f"# plot: {args.out}")


if __name__ == "__main__":
    main()
