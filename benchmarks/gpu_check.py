"""One-shot GPU check: CUDA tests, parity with upstream SAM 2, speed and memory, as one table.

Sections (each under its own time budget; a failing or late section puts its error in the table and
the check goes on):

* ``tests``: the CUDA test subset (``pytest -m cuda tests``); "skipped: no CUDA" without a GPU;
* ``parity``: our ``build_sam2_video_predictor`` vs upstream ``sam2==1.1.0`` (``tests/upstream_ref.py``)
  on the same seeded random weights (official checkpoint format), frames and prompts (object 1: a
  mask, object 2: a click and a box, on frame 0), in float32 and in bf16 (upstream: its scripts'
  ``torch.autocast(device, bfloat16)`` around everything; ours: ``dtype="bfloat16"``); per frame the
  IoU of the binary masks (lowest over objects) and the number of pixels differing (all objects).
  Upstream skips hole filling when its compiled extension ``sam2._C`` is missing (the PyPI sdist
  ships none), so ours runs with ``fill_hole_area = 0`` then;
* ``speed``: frames/s and peak memory of SAM 2 (ours, ``benchmarks/propagation.py``), upstream SAM 2
  (bf16 autocast on CUDA, as its scripts) and SAM2Long with P = 1 and 3 pathways, on the same
  frames (a JPEG folder of ``propagation.SyntheticVideo``) with the same mask prompts, 1 and 3
  objects, one run each, every case in a fresh process. Upstream is timed like ours, with
  ``propagation.StageTimer``'s per-stage hooks (synchronised on CUDA), so the rows compare;
* ``long``: peak memory of SAM2Long (P = 3, outputs not stored) at two video lengths (full check:
  2.1-T at 512 px, 2 objects, 500 and 2,000 frames; the model size does not change what grows with
  the video, and 2,000 frames of 2.1-L would not fit the time): flat memory means the longer video
  needs no more.

``peak MB`` is ``torch.cuda.max_memory_allocated`` during propagation on CUDA and the process's
peak RSS on CPU. Weights are seeded random (nothing is downloaded but the upstream sdist): the
masks mean nothing, agreement and cost are what is measured.

Usage: ``bash benchmarks/gpu_check.sh`` (CUDA, < 8 min on one H200) or
``python benchmarks/gpu_check.py --device cpu --quick --out DIR`` (tiny model, 256 px, a few
frames: ~2 min on 2 cores). Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` after every
section, so an interrupted run still leaves the rows it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TESTS = REPO / "tests"
PROPAGATION = BENCHMARKS / "propagation.py"
sys.path.insert(0, str(BENCHMARKS))
import propagation  # noqa: E402
from propagation import SyntheticVideo, prompt_objects  # noqa: E402

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
LARGE = "configs/sam2.1/sam2.1_hiera_l.yaml"
MODEL_NAMES = {TINY: "2.1-T", LARGE: "2.1-L"}
SECTIONS = ("tests", "parity", "speed", "long")
OBJ_SCORE_BIAS = 5.0  # random weights: a clearly positive object score keeps every object present


@dataclass(frozen=True)
class Plan:
    """Sizes and time budgets (seconds) of one run: the full GPU check or ``--quick``."""

    parity_configs: tuple[str, ...]
    parity_size: int
    parity_frames: int
    speed_config: str
    speed_size: int
    speed_frames: int
    speed_objects: tuple[int, ...]
    speed_modes: tuple[str, ...]
    long_config: str
    long_size: int
    long_objects: int
    long_mode: str
    long_frames: tuple[int, int]
    budget: dict[str, float] = field(default_factory=dict)


FULL = Plan(
    parity_configs=(TINY, LARGE),
    parity_size=1024,
    parity_frames=16,
    speed_config=LARGE,
    speed_size=1024,
    speed_frames=64,
    speed_objects=(1, 3),
    speed_modes=("sam2", "upstream", "p1", "p3"),
    long_config=TINY,
    long_size=512,
    long_objects=2,
    long_mode="p3",
    long_frames=(500, 2000),
    budget={"upstream": 40, "tests": 60, "parity": 100, "speed": 160, "long": 100},
)
QUICK = Plan(
    parity_configs=(TINY,),
    parity_size=256,
    parity_frames=4,
    speed_config=TINY,
    speed_size=256,
    speed_frames=4,
    speed_objects=(1, 3),
    speed_modes=("sam2", "upstream", "p1", "p3"),
    long_config=TINY,
    long_size=256,
    long_objects=1,
    long_mode="p3",
    long_frames=(10, 40),
    # CPU runs only guard against hangs: a loaded machine may be many times slower than an idle one.
    budget={"upstream": 300, "tests": 60, "parity": 600, "speed": 900, "long": 600},
)


@dataclass
class Row:
    """One line of the table; empty fields print as a dash."""

    section: str
    case: str
    dtype: str = ""
    frames: Optional[int] = None
    fps: Optional[float] = None
    peak_mb: Optional[float] = None
    iou_min: Optional[float] = None
    iou_mean: Optional[float] = None
    px_max: Optional[int] = None
    px_total: Optional[int] = None
    status: str = "ok"
    notes: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class CheckError(RuntimeError):
    """A case failed or ran out of time; its message goes into the table, its output into the JSON."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output[-4000:]


class Deadline:
    """A section's time budget; every subprocess gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining < 1:
            raise CheckError(f"section budget of {self.seconds:.0f} s spent")
        return remaining


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the table)."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _spawn(cmd: list[str], logfile: Path, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so its children can be killed with it), output to ``logfile``."""
    with open(logfile, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _finish(proc: subprocess.Popen, logfile: Path, deadline: Deadline, what: str) -> tuple[int, str]:
    """Wait for ``proc`` within the section's budget and return ``(exit code, output)``.

    On a timeout (:class:`CheckError`) or any interruption the process is killed with its children.
    """
    timeout = 0.0
    try:
        timeout = deadline.left()
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CheckError(f"{what}: timed out after {timeout:.0f} s (section budget)") from None
    except BaseException:
        _kill_group(proc)
        raise
    return rc, logfile.read_text(errors="replace")


def run_command(
    cmd: list[str], deadline: Deadline, what: str, env: Optional[dict[str, str]] = None
) -> tuple[int, str]:
    """Run ``cmd`` to completion within ``deadline``; ``(exit code, output)``."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        logfile = Path(tmp) / "log.txt"
        return _finish(_spawn(cmd, logfile, env), logfile, deadline, what)


def _set_error(row: Row, err: Exception) -> None:
    """Mark ``row`` failed: the error in the table, the failing process's output tail in the JSON."""
    row.status = f"error: {_describe(err)}"
    if getattr(err, "output", ""):
        row.data["output_tail"] = err.output


def _describe(err: Exception) -> str:
    """A case's error for the table: our own messages as they are, others with their type."""
    return str(err) if isinstance(err, CheckError) else f"{type(err).__name__}: {err}"


def _last_error(output: str) -> str:
    """The line that says what went wrong (an exception's last line), shortened for the table."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        crash = line.startswith(("terminate called", "Fatal Python error", "Segmentation fault"))
        if crash or re.match(r"^[\w.]*(Error|Exception|Failed|Interrupt)\b", line) or "Error:" in line:
            return line[-300:]
    return (lines[-1] if lines else "no output")[-300:]


# --------------------------------------------------------------------------- drivers


def parity_driver(args: dict[str, Any]) -> dict[str, Any]:
    """One side of the parity check (runs as ours in a worker, as upstream's via ``upstream_ref``).

    Self-contained (its source is shipped to the upstream interpreter). Returns per dtype the
    propagated frames as ``(frame_idx, obj_ids, binary masks (num_obj, H, W) on the CPU)``.
    """
    import contextlib

    import torch

    from sam2.build_sam import build_sam2_video_predictor

    device = torch.device(args["device"])
    ours = args["side"] == "ours"
    results = {}
    for dtype in args["dtypes"]:
        predictor = build_sam2_video_predictor(
            args["config"],
            args["checkpoint"],
            device=device,
            hydra_overrides_extra=[f"++model.image_size={args['image_size']}"],
            **({"dtype": dtype} if ours else {}),
        )
        if ours and not args["fill_holes"]:
            predictor.fill_hole_area = 0
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if not ours and dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        frames = []
        with torch.inference_mode(), autocast:
            state = predictor.init_state(args["frames_dir"])
            for obj_id, prompt in args["prompts"]:
                if "mask" in prompt:
                    predictor.add_new_mask(state, 0, obj_id, prompt["mask"])
                else:
                    predictor.add_new_points_or_box(
                        state, 0, obj_id, points=prompt["points"], labels=prompt["labels"], box=prompt["box"]
                    )
            for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
                frames.append((frame_idx, list(obj_ids), (masks[:, 0] > 0).cpu()))
        if hasattr(state["images"], "close"):  # ours: stop the frame read-ahead thread now, not at exit
            state["images"].close()
        results[dtype] = frames
        del predictor, state
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def upstream_speed_driver(args: dict[str, Any]) -> dict[str, Any]:
    """Upstream SAM 2's propagation speed and peak memory, measured exactly as ``propagation.py`` measures ours.

    Runs under upstream ``sam2`` with ``propagation.StageTimer`` shipped along (both models name their
    modules alike): default-initialised weights (speed does not depend on them), bf16 autocast on
    CUDA as upstream's scripts, the clock, the stage hooks and the peak-memory counter started
    after the prompts.
    """
    import contextlib
    import time
    from pathlib import Path

    import torch

    from sam2.build_sam import build_sam2_video_predictor

    device = torch.device(args["device"])
    predictor = build_sam2_video_predictor(
        args["config"],
        None,
        device=device,
        hydra_overrides_extra=[f"++model.image_size={args['image_size']}"],
    )
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    timer = StageTimer(predictor, sync=cuda)  # noqa: F821 (shipped with the driver, see upstream_speed_script)
    with torch.inference_mode(), autocast:
        state = predictor.init_state(args["frames_dir"])
        for frame_idx, obj_id, mask in args["prompts"]:
            predictor.add_new_mask(state, frame_idx, obj_id, mask)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        timer.reset()
        start = time.perf_counter()
        frames = sum(1 for _ in predictor.propagate_in_video(state))
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    timer.remove()
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    else:
        status = Path("/proc/self/status").read_text().splitlines()
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    stages_ms = {stage: 1000 * value / max(frames, 1) for stage, value in timer.seconds.items()}
    stages_ms["tree_host"] = 1000 * seconds / max(frames, 1) - sum(stages_ms.values())
    return {
        "frames": frames,
        "seconds": seconds,
        "fps": round(frames / seconds, 3),
        "peak_mb": round(peak / 2**20, 1),
        **{f"{stage}_ms": round(value, 3) for stage, value in stages_ms.items()},
    }


def upstream_speed_script() -> str:
    """Source of :func:`upstream_speed_driver` with what it needs from ``propagation.py``."""
    parts = [
        "import time",
        "from typing import Optional",
        f"STAGES = {propagation.STAGES!r}",
        inspect.getsource(propagation._submodule),
        inspect.getsource(propagation.StageTimer),
        _upstream_ref().driver_script(upstream_speed_driver),
    ]
    return "\n".join(parts)


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"parity_driver": parity_driver}


def worker_main(name: str, args_path: str, result_path: str) -> None:
    """Child process: run driver ``name`` with our ``sam2`` on saved args, save its result."""
    with torch.no_grad():
        result = WORKERS[name](torch.load(args_path, weights_only=False))
    torch.save(result, result_path)


class OursJob:
    """A driver running with our ``sam2`` in a worker subprocess (killable, like upstream's jobs)."""

    def __init__(self, name: str, args: dict[str, Any], threads: int) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="gpu-check-ours-")
        work = Path(self._tmp.name)
        torch.save(args, work / "in.pt")
        self.logfile, self.result_path = work / "log.txt", work / "out.pt"
        cmd = [sys.executable, __file__, "--worker", name, str(work / "in.pt"), str(self.result_path)]
        self.proc = _spawn(cmd, self.logfile, {"OMP_NUM_THREADS": str(threads)})

    def result(self, deadline: Deadline) -> dict[str, Any]:
        """Wait for the worker and load its result (:class:`CheckError` if it failed)."""
        try:
            rc, output = _finish(self.proc, self.logfile, deadline, "ours")
            if rc != 0:
                raise CheckError(f"ours: exit code {rc}: {_last_error(output)}", output)
            return torch.load(self.result_path, weights_only=False)
        finally:
            self._tmp.cleanup()


# --------------------------------------------------------------------------- upstream


def _upstream_ref():
    """``tests/upstream_ref.py`` (imported by path: it lives with the tests)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import upstream_ref

    return upstream_ref


def locate_upstream(timeout: float) -> Path:
    """The extracted upstream sdist, fetched if needed in a killable subprocess.

    Its path is then exported as ``SAM2_UPSTREAM_SRC`` so later lookups (here and in ``upstream_ref``)
    are instant.
    """
    code = "import upstream_ref; print(upstream_ref.upstream_root())"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))}
    rc, output = run_command([sys.executable, "-c", code], Deadline(timeout), "upstream lookup", env)
    if rc != 0:
        raise CheckError(f"upstream sam2==1.1.0 unavailable: {_last_error(output)}")
    root = Path(output.strip().splitlines()[-1])
    os.environ["SAM2_UPSTREAM_SRC"] = str(root)
    return root


class UpstreamRun:
    """``upstream_ref.UpstreamJob`` with its test-framework outcomes turned into :class:`CheckError`."""

    def __init__(self, script: str, args: dict[str, Any], threads: int) -> None:
        ref = _upstream_ref()
        self._outcomes = _pytest_outcomes()
        try:  # the timeout is set when waiting, from what is left of the section's budget
            self.job = ref.UpstreamJob(script, args, threads=threads, timeout=0)
        except self._outcomes as err:
            raise CheckError(f"upstream: {err}") from None

    def result(self, deadline: Deadline) -> dict[str, Any]:
        """Wait within the section's budget; the driver is stopped on any failure or interruption."""
        try:
            self.job.timeout = deadline.left()
            return self.job.result()
        except self._outcomes as err:
            raise CheckError(f"upstream: {_last_error(str(err))}", str(err)) from None
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        self.job.cancel()


def _pytest_outcomes() -> tuple[type[BaseException], ...]:
    """The exceptions ``pytest.fail`` / ``pytest.skip`` raise (``upstream_ref`` reports with them)."""
    import pytest

    return (pytest.fail.Exception, pytest.skip.Exception)


# --------------------------------------------------------------------------- inputs


def write_frames(folder: Path, count: int) -> SyntheticVideo:
    """``count`` frames of ``SyntheticVideo`` as JPEGs (both libraries read the same files)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    video = SyntheticVideo(count)
    for index in range(count):
        Image.fromarray(video.get(index)).save(folder / f"{index:05d}.jpg", quality=95)
    return video


class _PromptRecorder:
    """Stands in for a predictor to capture the mask prompts ``propagation.prompt_objects`` gives."""

    def __init__(self) -> None:
        self.prompts: list[tuple[int, int, torch.Tensor]] = []

    def add_new_mask(self, state: Any, frame_idx: int, obj_id: int, mask: np.ndarray) -> None:
        self.prompts.append((frame_idx, obj_id, torch.from_numpy(mask)))


def speed_prompts(video: SyntheticVideo, count: int) -> list[tuple[int, int, torch.Tensor]]:
    """The benchmark's mask prompts for ``count`` objects, so upstream gets exactly ours."""
    recorder = _PromptRecorder()
    prompt_objects(recorder, None, video, count)
    return recorder.prompts


def parity_prompts(video: SyntheticVideo) -> list[tuple[int, dict[str, Any]]]:
    """Object 1: the red ellipse's mask; object 2: a click on the green ellipse plus its box."""
    frame = video.get(0).astype(int)
    red = (frame == (255, 60, 60)).all(-1)
    ys, xs = np.nonzero((frame == (60, 255, 60)).all(-1))
    point = [[float(xs.mean()), float(ys.mean())]]
    box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    return [(1, {"mask": torch.from_numpy(red)}), (2, {"points": point, "labels": [1], "box": box})]


def write_checkpoint(config: str, path: Path) -> None:
    """Seeded random weights in the official format (``tests/conftest.py``'s generator)."""
    threads = torch.get_num_threads()
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from conftest import random_state_dict, set_object_score_bias

    torch.set_num_threads(threads)  # conftest pins tests to 2 threads on import
    from sam2.build_sam import build_sam2

    model = build_sam2(config, None, device="cpu", apply_postprocessing=False)
    state_dict = random_state_dict(model.state_dict(), seed=0)
    set_object_score_bias(state_dict, OBJ_SCORE_BIAS)
    torch.save({"model": state_dict}, path)


# --------------------------------------------------------------------------- sections


@dataclass
class Context:
    """What the sections share."""

    device: str
    plan: Plan
    work: Path
    threads: int
    upstream: Optional[Path] = None
    upstream_error: str = ""
    frames_dir: Optional[Path] = None
    video: Optional[SyntheticVideo] = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def require_upstream(self) -> Path:
        if self.upstream is None:
            raise CheckError(self.upstream_error or "upstream sam2==1.1.0 not located")
        return self.upstream


def section_tests(ctx: Context, deadline: Deadline) -> list[Row]:
    """``pytest -m cuda tests``: the CUDA subset, or a skip line without CUDA."""
    row = Row("CUDA tests", "pytest -m cuda tests")
    if not ctx.cuda or not torch.cuda.is_available():
        why = f"--device {ctx.device}" if not ctx.cuda else "torch.cuda.is_available() is False"
        row.status, row.notes = "skipped: no CUDA", why
        return [row]
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider"]
    cmd += ["--continue-on-collection-errors", str(TESTS)]
    rc, output = run_command(cmd, deadline, "pytest")
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\bin [\d.]+s\b", line)), "")
    failed = [
        line for line in lines if line.startswith("FAILED") or (line.startswith("ERROR") and "::" in line)
    ]
    uncollected = [line for line in lines if line.startswith("ERROR") and "::" not in line]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    # A module that cannot be collected (an optional extra missing) is reported, not counted as a failure.
    row.status = "ok" if counts.get("passed", 0) > 0 and not failed else f"failed (exit code {rc})"
    notes = [summary or _last_error(output), *failed[:5]]
    if uncollected:
        notes.append(
            "not collected: " + ", ".join(line.split()[1] for line in uncollected if len(line.split()) > 1)
        )
    row.notes = "; ".join(notes)
    row.data = {"exit_code": rc, "counts": counts, "output_tail": output[-4000:]}
    return [row]


def _frame_agreement(ours: list, theirs: list) -> dict[str, Any]:
    """Per frame: the lowest IoU over objects and the pixels differing over all objects."""
    if [f for f, _, _ in ours] != [f for f, _, _ in theirs]:
        raise CheckError("ours and upstream yielded different frames")
    ious, diffs = [], []
    for (_, ids_a, a), (_, ids_b, b) in zip(ours, theirs):
        if ids_a != ids_b or a.shape != b.shape:
            raise CheckError(
                f"object ids / mask shapes differ: {ids_a} {tuple(a.shape)} vs {ids_b} {tuple(b.shape)}"
            )
        union = (a | b).flatten(1).sum(1)
        inter = (a & b).flatten(1).sum(1)
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))
        ious.append(float(iou.min()))
        diffs.append(int((a ^ b).sum()))
    empty = sum(int(not m.flatten(1).any(1).all()) for _, _, m in theirs)
    return {"iou": ious, "px": diffs, "frames_with_an_empty_mask": empty}


def section_parity(ctx: Context, deadline: Deadline) -> Iterator[Row]:
    """Ours vs upstream on the same weights, frames and prompts, float32 and bf16."""
    plan = ctx.plan
    root = ctx.require_upstream()
    has_ext = any((root / "sam2").glob("_C*"))
    frames_dir = linked_frames(ctx, "parity_frames", plan.parity_frames)
    prompts = parity_prompts(ctx.video)
    dtypes = ["float32", "bfloat16"]
    short = {"float32": "fp32", "bfloat16": "bf16"}
    for config in plan.parity_configs:
        case = f"{MODEL_NAMES[config]} {plan.parity_size} px, 2 obj"
        rows = [
            Row("parity vs upstream", case, short[d] + ("" if d == "float32" else " autocast"))
            for d in dtypes
        ]
        checkpoint = ctx.work / f"{Path(config).stem}_random.pt"
        try:
            log(f"parity {case}: random checkpoint")
            write_checkpoint(config, checkpoint)
            args = {
                "config": config,
                "checkpoint": str(checkpoint),
                "device": ctx.device,
                "image_size": plan.parity_size,
                "dtypes": dtypes,
                "frames_dir": str(frames_dir),
                "prompts": prompts,
                "fill_holes": has_ext,
            }
            log(f"parity {case}: ours and upstream, {plan.parity_frames} frames, fp32 + bf16")
            # Both sides at once: on CUDA they share the GPU, on CPU they split the cores.
            threads = ctx.threads if ctx.cuda else max(1, ctx.threads // 2)
            script = _upstream_ref().driver_script(parity_driver)
            upstream = UpstreamRun(script, {**args, "side": "upstream"}, threads)
            try:
                ours = OursJob("parity_driver", {**args, "side": "ours"}, threads).result(deadline)
            except BaseException:
                upstream.cancel()
                raise
            theirs = upstream.result(deadline)
        except Exception as err:
            for row in rows:
                _set_error(row, err)
            yield from rows
            continue
        finally:
            checkpoint.unlink(missing_ok=True)
        for dtype, row in zip(dtypes, rows):
            try:
                _fill_parity(row, ours, theirs, dtype, has_ext)
            except CheckError as err:
                row.status = f"error: {err}"
            yield row


def _fill_parity(row: Row, ours: dict, theirs: dict, dtype: str, has_ext: bool) -> None:
    """Agreement of ours and upstream at ``dtype`` into ``row``."""
    agree = _frame_agreement(ours[dtype], theirs[dtype])
    row.frames = len(agree["iou"])
    row.iou_min, row.iou_mean = min(agree["iou"]), float(np.mean(agree["iou"]))
    row.px_max, row.px_total = max(agree["px"]), sum(agree["px"])
    row.notes = "IoU/frame " + " ".join(f"{v:.4f}" for v in agree["iou"])
    row.notes += "; px/frame " + " ".join(str(v) for v in agree["px"])
    if not has_ext:
        row.notes += "; hole filling off (upstream has no sam2._C)"
    if dtype != "float32":
        # Shows the bf16 path really ran: ours in bf16 against ours in float32.
        drift = _frame_agreement(ours[dtype], ours["float32"])
        row.notes += f"; ours bf16 vs fp32: IoU min {min(drift['iou']):.4f}, px {sum(drift['px'])}"
        agree["bf16_vs_fp32_ours"] = drift
    if agree["frames_with_an_empty_mask"]:
        row.notes += f"; {agree['frames_with_an_empty_mask']} frames with an empty upstream mask"
    row.data = agree


def propagation_case(ctx: Context, deadline: Deadline, extra: list[str]) -> dict:
    """One case of ``benchmarks/propagation.py`` (``extra`` selects it): its JSON row.

    A case whose process fails (not one that runs out of time) is run once more, and the row then
    says so in ``retried_after``: a single-shot GPU run should not lose a row to a rare crash, nor
    hide one.
    """
    out = ctx.work / f"propagation_{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(PROPAGATION), "--device", ctx.device, "--json", str(out), *extra]
    rc, output = run_command(cmd, deadline, "propagation.py")
    first = None
    if rc != 0:
        first = CheckError(f"exit code {rc}: {_last_error(output)}", output)
        log(f"  propagation.py failed ({first}); running the case once more")
        rc, output = run_command(cmd, deadline, "propagation.py")
        if rc != 0:
            raise CheckError(f"propagation.py failed twice, {first}; then exit code {rc}", output)
    data = json.loads(out.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    if len(rows) != 1:
        raise CheckError(f"propagation.py: expected one row, got {len(rows)}")
    if first is not None:
        rows[0].update(retried_after=str(first), first_output_tail=first.output)
    return rows[0]


def _mode_name(mode: str) -> str:
    if mode == "sam2":
        return "SAM 2 (ours)"
    if mode == "upstream":
        return "SAM 2 (upstream 1.1.0)"
    return f"SAM2Long P={mode[1:]}"


def _short_dtype(name: Any) -> str:
    return {"bfloat16": "bf16", "float32": "fp32", "torch.bfloat16": "bf16", "torch.float32": "fp32"}.get(
        str(name), str(name)
    )


def _stage_notes(result: dict) -> str:
    """Session size and the per-stage split of a frame's time (``propagation.py``'s ``*_ms`` keys)."""
    notes = []
    if result.get("state_mb") is not None:
        notes.append(f"state {result['state_mb']} MB")
    stages = [
        (k.removesuffix("_ms"), v)
        for k, v in result.items()
        if k.endswith("_ms") and isinstance(v, (int, float))
    ]
    if stages:
        notes.append("ms/frame " + ", ".join(f"{k} {float(v):.1f}" for k, v in stages))
    return "; ".join(notes)


def _fill_from_propagation(row: Row, result: dict) -> None:
    """Copy one ``propagation.py`` JSON row into a table row."""
    dtype = _short_dtype(result.get("dtype", row.dtype))
    row.dtype = f"auto={dtype}" if result.get("dtype_requested") == "auto" else dtype
    row.frames, row.fps, row.peak_mb = result.get("frames"), result.get("fps"), result.get("peak_mb")
    row.notes = _stage_notes(result)
    if result.get("retried_after"):
        row.notes += f"; run twice, the first run failed: {result['retried_after']}"
    row.data = result


def linked_frames(ctx: Context, name: str, count: int) -> Path:
    """A folder of ``count`` frames cycling through the written ones (hard links: no encoding, no space)."""
    folder = ctx.work / name
    folder.mkdir(exist_ok=True)
    sources = sorted(ctx.frames_dir.glob("*.jpg"))
    for index in range(count):
        target = folder / f"{index:05d}.jpg"
        try:
            os.link(sources[index % len(sources)], target)
        except OSError:
            target.write_bytes(sources[index % len(sources)].read_bytes())
    return folder


def section_speed(ctx: Context, deadline: Deadline) -> Iterator[Row]:
    """fps and peak memory: ours, upstream and SAM2Long P = 1, 3, same frames, fresh process each."""
    plan = ctx.plan
    ours_dtype = "auto" if ctx.cuda else "float32"  # the precision upstream's scripts use there
    model = f"{MODEL_NAMES[plan.speed_config]} {plan.speed_size} px"
    frames_dir = linked_frames(ctx, "speed_frames", plan.speed_frames)
    for objects in plan.speed_objects:
        for mode in plan.speed_modes:
            row = Row("speed", f"{_mode_name(mode)} {model}, {objects} obj")
            log(f"speed: {row.case}")
            try:
                if mode == "upstream":
                    ctx.require_upstream()
                    row.dtype = "bf16 autocast" if ctx.cuda else "fp32"
                    args = {
                        "config": plan.speed_config,
                        "image_size": plan.speed_size,
                        "device": ctx.device,
                        "frames_dir": str(frames_dir),
                        "prompts": speed_prompts(ctx.video, objects),
                    }
                    result = UpstreamRun(upstream_speed_script(), args, ctx.threads).result(deadline)
                    row.frames, row.fps, row.peak_mb = result["frames"], result["fps"], result["peak_mb"]
                    notes = [_stage_notes(result), "all frames preloaded on the device (upstream's default)"]
                    if not any((ctx.upstream / "sam2").glob("_C*")):
                        notes.append("no hole filling (no sam2._C)")
                    row.notes = "; ".join(notes)
                    row.data = result
                else:
                    extra = ["--modes", mode, "--frames", str(plan.speed_frames), "--objects", str(objects)]
                    extra += ["--image_size", str(plan.speed_size), "--config", plan.speed_config]
                    extra += ["--dtypes", ours_dtype, "--video", str(frames_dir)]
                    result = propagation_case(ctx, deadline, extra)
                    _fill_from_propagation(row, result)
            except Exception as err:
                _set_error(row, err)
            yield row


def section_long(ctx: Context, deadline: Deadline) -> Iterator[Row]:
    """Peak memory of SAM2Long (outputs not stored) at a short and a long video.

    The frames cycle through the written JPEGs (decoding is cheaper than generating them, so the
    long run is not held back by the CPU).
    """
    plan = ctx.plan
    dtype = "auto" if ctx.cuda else "float32"
    model = f"{MODEL_NAMES[plan.long_config]} {plan.long_size} px"
    peaks = {}
    for frames in plan.long_frames:
        row = Row(
            "long video", f"{_mode_name(plan.long_mode)} {model}, {plan.long_objects} obj, outputs not stored"
        )
        log(f"long video: {frames} frames")
        try:
            extra = ["--modes", plan.long_mode, "--frames", str(frames), "--objects", str(plan.long_objects)]
            extra += ["--image_size", str(plan.long_size), "--config", plan.long_config, "--dtypes", dtype]
            extra += ["--video", str(linked_frames(ctx, f"long_frames_{frames}", frames))]
            result = propagation_case(ctx, deadline, extra)
            _fill_from_propagation(row, result)
            peaks[frames] = row.peak_mb
        except Exception as err:
            row.frames = frames
            _set_error(row, err)
        if len(peaks) == 2:
            short, long = plan.long_frames
            row.notes = f"peak at {long} / at {short} frames = {peaks[long] / peaks[short]:.3f}; " + row.notes
        yield row


# --------------------------------------------------------------------------- report


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: str, command: str) -> dict[str, Any]:
    """GPU, driver, CPU, library versions, date and command line for the table's header."""
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read_lines("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    gpu = smi.splitlines()[0] if smi else ""
    if not gpu and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            gpu = torch.cuda.get_device_name()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "device": device,
        "gpu": gpu or "none",
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "commit": _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown",
    }


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


COLUMNS = (
    "section",
    "case",
    "dtype",
    "frames",
    "fps",
    "peak MB",
    "IoU min / mean",
    "px diff max / total",
    "status",
    "notes",
)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(meta: dict[str, Any], rows: list[Row]) -> str:
    """The markdown report: a header of what ran where, then the one table."""
    env = meta["env"]
    lines = [
        f"## GPU check ({env['date']})",
        "",
        f"- command: `{env['command']}` (commit {env['commit']}, {meta['mode']})",
        f"- GPU: {env['gpu']}; CPU: {env['cpu']}",
        f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Python {env['python']}",
        f"- upstream: {meta['upstream']}",
        "- peak MB: `torch.cuda.max_memory_allocated` during propagation on CUDA, peak RSS of the process on "
        "CPU; weights: seeded random; parity: lowest IoU over the 2 objects per frame, pixels differing over "
        "both objects; speed: one run per case in a fresh process, ours and upstream timed alike "
        "(propagation.py's per-stage hooks, synchronised on CUDA)",
        f"- time: {meta['total_s']:.0f} s{'' if meta['finished'] else ', stopped before the end'}; sections: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in meta["section_s"].items()),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        iou = None if row.iou_min is None else f"{row.iou_min:.4f} / {row.iou_mean:.4f}"
        px = None if row.px_max is None else f"{row.px_max} / {row.px_total}"
        cells = (
            row.section,
            row.case,
            row.dtype,
            row.frames,
            row.fps,
            row.peak_mb,
            iou,
            px,
            row.status,
            row.notes,
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def save(out: Path, meta: dict[str, Any], rows: list[Row]) -> str:
    """Write ``gpu_check.json`` and ``gpu_check.md`` (atomically) and return the markdown."""
    table = render(meta, rows)
    payload = {"meta": meta, "columns": COLUMNS, "rows": [asdict(r) for r in rows]}
    for name, text in (
        ("gpu_check.json", json.dumps(payload, indent=1, default=str)),
        ("gpu_check.md", table),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return table


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model, 256 px, a few frames (CPU test)")
    parser.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--upstream_src", help="extracted sam2==1.1.0 sdist (sets SAM2_UPSTREAM_SRC)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM (the shell script's overall timeout): unwind, so running cases' processes are killed."""
    raise SystemExit(128 + signum)


def _upstream_cache(out: Path) -> None:
    """Fetch the upstream sdist into ``out`` unless a source or a filled cache is already set up."""
    if os.environ.get("SAM2_UPSTREAM_SRC") or os.environ.get("SAM2_UPSTREAM_CACHE"):
        return
    if not (_upstream_ref().cache_dir() / "sam2-1.1.0").is_dir():
        os.environ["SAM2_UPSTREAM_CACHE"] = str(out / "upstream")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return 0
    signal.signal(signal.SIGTERM, _stop)
    if args.upstream_src:
        os.environ["SAM2_UPSTREAM_SRC"] = str(Path(args.upstream_src).resolve())
    start = time.monotonic()
    plan = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _upstream_cache(out)
    command = os.environ.get("GPU_CHECK_COMMAND") or shlex.join(["python", *sys.argv])
    meta: dict[str, Any] = {
        "env": environment(args.device, command),
        "mode": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "upstream": "not needed",
        "section_s": {},
        "total_s": 0.0,
        "finished": False,
    }
    rows: list[Row] = []
    wanted = args.sections.split(",")
    sections: dict[str, Callable[[Context, Deadline], Any]] = {
        "tests": section_tests,
        "parity": section_parity,
        "speed": section_speed,
        "long": section_long,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            ctx = Context(args.device, plan, Path(tmp), threads=torch.get_num_threads())
            if {"parity", "speed"} & set(wanted):
                log("locating upstream sam2==1.1.0")
                try:
                    ctx.upstream = locate_upstream(plan.budget["upstream"])
                    has_ext = any((ctx.upstream / "sam2").glob("_C*"))
                    meta["upstream"] = (
                        f"sam2==1.1.0 sdist at {ctx.upstream}, compiled sam2._C: {'yes' if has_ext else 'no'}"
                    )
                except CheckError as err:
                    ctx.upstream_error = meta["upstream"] = str(err)
            ctx.frames_dir = ctx.work / "frames"
            ctx.video = write_frames(ctx.frames_dir, max(plan.parity_frames, plan.speed_frames))
            for name in (n for n in SECTIONS if n in wanted):
                log(f"section {name} (budget {plan.budget[name]:.0f} s)")
                began, deadline = time.monotonic(), Deadline(plan.budget[name])
                try:
                    for row in sections[name](ctx, deadline):
                        rows.append(row)
                        log(f"  {row.case} [{row.dtype or '-'}]: {row.status}")
                        meta["total_s"] = round(time.monotonic() - start, 1)
                        save(out, meta, rows)
                except Exception as err:  # a section's own bug must not cost the other sections
                    rows.append(Row(name, "section", status=f"error: {_describe(err)}"))
                finally:
                    meta["section_s"][name] = round(time.monotonic() - began, 1)
        meta["finished"] = True
    finally:
        meta["total_s"] = round(time.monotonic() - start, 1)
        table = save(out, meta, rows)
    print(table)
    log(f"done in {meta['total_s']:.0f} s: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}")
    return 0 if all(r.status == "ok" or r.status.startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
