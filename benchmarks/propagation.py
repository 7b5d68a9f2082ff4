"""Propagation speed, peak memory and where the time goes, for SAM 2 and SAM2Long, as one table.

Each case (predictor mode x video length x dtype) runs in a fresh subprocess so its peak memory is
its own: CUDA max-allocated bytes on GPU, peak resident set size on CPU. ``state_MB`` is what the
session still holds after propagation (stored memories and masks). By default frames are generated
on the fly (moving shapes on a textured background), so the video length costs no input memory and
the numbers show what the trackers themselves keep; ``--video`` times a real video instead (file or
frame folder; ``--frames N`` then tracks its first N frames).

Per tracked frame, the propagation's wall time is split into the network stages, timed by forward
hooks (synchronised on CUDA): ``enc`` image encoder (with the decoder's 1x1 projections of the high
resolution levels, applied once per frame with the features), ``mem_attn`` memory attention,
``decoder`` prompt encoder + mask decoder, ``mem_enc`` memory encoder, and ``tree+host`` = the rest
(SAM2Long's tree and memory selection, memory assembly, frame decoding, resizing and output
bookkeeping, Python). The stages add up to ``s/frame``.

Example (about 3 minutes on 2 CPU cores)::

    python benchmarks/propagation.py --image_size 256 --frames 8,32 --objects 2 --modes sam2,p1,p3 \\
        --dtypes float32,bfloat16 --json /tmp/propagation.json

``--config`` takes several model configs, comma-separated, for one table across models (e.g. SAM 2.1
tiny against the on-device EdgeTAM: ``--config configs/sam2.1/sam2.1_hiera_t.yaml,configs/edgetam.yaml
--image_size 1024``; EdgeTAM's memory attention is laid out for 1024 px).

Modes: ``sam2`` (SAM2VideoPredictor), ``pN`` (SAM2Long with N pathways, outputs not stored),
``pN-unshared`` (the same with the exact first-layer sharing of memory attention switched off, to
measure what it saves; outputs are bit-identical, ``tests/test_shared_rows.py``).
Dtypes are precision policies (``float32``, ``bfloat16``, ``auto``; see ``sam2.precision``); the
table shows the dtype a case really computed in. Weights are random unless ``--checkpoint`` is
given: speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sam2.precision import DTYPE_CHOICES, check_dtype, cpu_bf16_support
from sam2.utils.frame_sources import FrameSource, open_frame_source

# Stage -> the modules (dotted paths on the model) whose forward calls it is made of.
STAGES: dict[str, tuple[str, ...]] = {
    "enc": ("image_encoder", "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1"),
    "mem_attn": ("memory_attention",),
    "decoder": ("sam_prompt_encoder", "sam_mask_decoder"),
    "mem_enc": ("memory_encoder",),
}
STAGE_COLUMNS = (*STAGES, "tree_host")  # JSON keys get an ``_ms`` suffix (ms per frame)


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
    """Give ``count`` box-shaped mask prompts on frame 0 (the benchmarks' objects), scaled to the video."""
    h, w = video.size
    for obj in range(count):
        mask = np.zeros((h, w), dtype=bool)
        x0 = int(w * (0.15 + 0.25 * obj))
        mask[h // 3 : 2 * h // 3, x0 : x0 + w // 6] = True
        predictor.add_new_mask(state, 0, obj + 1, mask)


class StageTimer:
    """Wall time spent inside each network stage, from forward pre/post hooks on its modules.

    A stage entered while another is running counts towards the outer one, so no time is counted
    twice. With ``sync`` (CUDA) the hooks synchronise, so a stage's time is its kernels' time.
    """

    def __init__(self, model: torch.nn.Module, sync: bool) -> None:
        self.sync = sync
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._active: Optional[tuple[str, torch.nn.Module]] = None
        self._start = 0.0
        self._handles = []
        for stage, paths in STAGES.items():
            for path in paths:
                module = _submodule(model, path)
                if module is not None:
                    self._handles.append(module.register_forward_pre_hook(self._enter(stage)))
                    self._handles.append(module.register_forward_hook(self._leave(stage)))

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _enter(self, stage: str):
        def hook(module: torch.nn.Module, args: Any) -> None:
            if self._active is None:
                if self.sync:
                    torch.cuda.synchronize()
                self._active = (stage, module)
                self._start = time.perf_counter()

        return hook

    def _leave(self, stage: str):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if self._active is not None and self._active[0] == stage and self._active[1] is module:
                if self.sync:
                    torch.cuda.synchronize()
                self.seconds[stage] += time.perf_counter() - self._start
                self._active = None

        return hook


def _submodule(model: torch.nn.Module, path: str) -> Optional[torch.nn.Module]:
    module: Any = model
    for name in path.split("."):
        module = getattr(module, name, None)
    return module if isinstance(module, torch.nn.Module) else None


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
    """One mode, video length and dtype, in this process."""
    from sam2.build_sam import build_sam2_video_predictor
    from sam2long import build_sam2long_video_predictor
    from sam2long.tracker_spec import TREE_TRACKERS, build_video_predictor

    torch.manual_seed(0)
    device = torch.device(args.device)
    overrides = [f"++model.image_size={args.image_size}"]
    common = dict(
        ckpt_path=args.checkpoint, device=device, hydra_overrides_extra=overrides, dtype=args.case_dtype
    )
    if args.mode == "sam2":
        predictor = build_sam2_video_predictor(args.config, **common)
    elif args.mode in TREE_TRACKERS:  # a tracker by name with its preset (samurai, sam2long-samurai, ...)
        predictor = build_video_predictor(args.mode, args.config, store_outputs=False, **common)
    else:
        pathways, _, variant = args.mode[1:].partition("-")
        predictor = build_sam2long_video_predictor(
            args.config, num_pathways=int(pathways), store_outputs=False, **common
        )
        if variant == "unshared":  # the exact first-layer sharing off: what it saves
            predictor.memory_attention.share_equal_rows = False
    if args.video:
        video, max_track = open_frame_source(args.video), max(args.num_frames - 1, 0)
    else:
        video, max_track = SyntheticVideo(args.num_frames), None
    cuda = device.type == "cuda"
    timer = StageTimer(predictor, sync=cuda)
    with torch.inference_mode():
        state = predictor.init_state(video)
        prompt_objects(predictor, state, video, args.objects)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        timer.reset()
        start = time.perf_counter()
        frames = 0
        for _ in predictor.propagate_in_video(state, max_frame_num_to_track=max_track):
            frames += 1
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    timer.remove()
    peak, kind = _peak_memory(device)
    held = {
        key: value for key, value in state.items() if key != "images"
    }  # the frame loader is not tracking state
    state_mb = _tensor_bytes(held) / 2**20
    per_frame = seconds / max(frames, 1)
    stages_ms = {stage: 1000 * value / max(frames, 1) for stage, value in timer.seconds.items()}
    stages_ms["tree_host"] = 1000 * per_frame - sum(stages_ms.values())
    precision = predictor.precision
    return {
        "model": Path(args.config).stem,
        "mode": args.mode,
        "dtype": precision.name,
        "dtype_requested": precision.requested,
        "dtype_reason": precision.reason,
        "objects": args.objects,
        "frames": frames,
        "seconds": round(seconds, 4),
        "s_per_frame": round(per_frame, 6),
        "fps": round(frames / seconds, 3),
        **{f"{stage}_ms": round(value, 3) for stage, value in stages_ms.items()},
        "peak_mb": round(peak / 2**20, 1),
        "state_mb": round(state_mb, 2),
        "memory": kind,
        "threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(args: argparse.Namespace) -> dict[str, Any]:
    """What the numbers were measured on, and how (the table's header and the JSON's ``header``)."""
    cuda = args.device.startswith("cuda")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "config": args.config,
        "checkpoint": args.checkpoint,
        "image_size": args.image_size,
        "objects": args.objects,
        "video": args.video or "synthetic 640x480",
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": cpu_bf16_support() or "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dtype_label(row: dict) -> str:
    short = "bf16" if row["dtype"] == "bfloat16" else "fp32"
    return f"auto={short}" if row["dtype_requested"] == "auto" else short


def format_row(row: dict) -> str:
    stages = " ".join(f"{row[f'{stage}_ms']:>9.1f}" for stage in STAGE_COLUMNS)
    return (
        f"{row['mode']:>16} {_dtype_label(row):>9} {row['frames']:>6} {row['s_per_frame']:>8.3f} "
        f"{row['fps']:>7.2f} | {stages} | {row['peak_mb']:>8.1f} {row['state_mb']:>8.2f}  {row['model']}"
    )


TABLE_HEADER = (
    f"{'mode':>16} {'dtype':>9} {'frames':>6} {'s/frame':>8} {'fps':>7} | "
    + " ".join(f"{name:>9}" for name in ("enc", "mem_attn", "decoder", "mem_enc", "tree+host"))
    + f" | {'peak_MB':>8} {'state_MB':>8}  model"
)


def _case_command(args: argparse.Namespace, config: str, mode: str, num_frames: int, dtype: str) -> list[str]:
    cmd = [sys.executable, __file__, "--mode", mode, "--num_frames", str(num_frames), "--case_dtype", dtype]
    cmd += ["--config", config]
    for name in ("image_size", "objects", "device", "checkpoint", "video"):
        if getattr(args, name) is not None:
            cmd += [f"--{name}", str(getattr(args, name))]
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        default="configs/sam2.1/sam2.1_hiera_t.yaml",
        help="model config(s), comma-separated: one table, a row per model x mode x frames x dtype",
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument(
        "--frames", default="16,64", help="comma-separated video lengths (with --video: frames tracked)"
    )
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument(
        "--modes",
        default="sam2,p1,p3",
        help="comma-separated: sam2, pN (SAM2Long with N pathways), or a tree tracker's name (samurai, ...)",
    )
    parser.add_argument(
        "--dtypes",
        default="float32,auto",
        help=f"comma-separated precision policies ({', '.join(DTYPE_CHOICES)}); default: %(default)s",
    )
    parser.add_argument(
        "--video", default=None, help="a video file or frame folder instead of synthetic frames"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the header and rows to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--num_frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case_dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.mode is not None:  # child process: one case
        print(json.dumps(run_case(args)))
        return

    dtypes = args.dtypes.split(",")
    for dtype in dtypes:
        try:
            check_dtype(dtype)
        except ValueError as err:
            parser.error(str(err))
    header = machine_header(args)
    gpu = f"{header['gpu']}, " if header["gpu"] else ""
    print(f"# {header['date']}  {header['command']}")
    print(
        f"# {args.config} image_size={args.image_size} objects={args.objects} video={header['video']} "
        f"device={args.device} ({gpu}CPU {header['cpu']} x{header['cpu_count']}, native bf16: "
        f"{header['cpu_bf16']}, torch {header['torch']}, {header['threads']} threads)"
    )
    print("# stage columns: ms per frame; tree+host = wall time minus the four network stages")
    print(TABLE_HEADER, flush=True)
    rows = []
    cases = [
        (config, mode, int(num_frames), dtype)
        for config in args.config.split(",")
        for mode in args.modes.split(",")
        for num_frames in args.frames.split(",")
        for dtype in dtypes
    ]
    for config, mode, num_frames, dtype in cases:
        proc = subprocess.run(
            _case_command(args, config, mode, num_frames, dtype), capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            sys.exit(
                f"case {config} mode={mode} frames={num_frames} dtype={dtype} failed ({proc.returncode})"
            )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(format_row(row), flush=True)
        if args.json is not None:
            write_json_atomic(args.json, {"header": header, "rows": rows})


if __name__ == "__main__":
    main()
