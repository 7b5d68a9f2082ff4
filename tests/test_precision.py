"""The precision policy (``sam2.precision``) and bf16 autocast on the CPU, end to end.

The policy tests are pure. The end-to-end tests run every entry point with ``dtype="bfloat16"`` on
the CPU (as upstream autocasts on CUDA) on real frames with seeded random weights at 256 px, and
compare the masks with the same run in float32: bf16 must neither fail with a dtype error nor hand
users anything but float32, and its masks must agree closely with float32's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sam2.precision
from sam2.build_sam import build_sam2, build_sam2_video_predictor
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.precision import DTYPE_CHOICES, Precision, check_dtype, resolve_precision
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2long import build_sam2long_video_predictor
from sam2long.cli import main as sam2long_main
from sam2long.mask_io import read_mask
from sam2long.vos import cli as vos_cli

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
NUM_FRAMES = 6
DTYPES = ("float32", "bfloat16")
CLICK = [198, 112]  # object 1: a positive click, in the 480x270 video's pixels
BOX = [75, 65, 140, 200]  # object 2: a box (x0, y0, x1, y1)
# Bounds on the fp32-vs-bf16 mask IoU: measured (AVX512-BF16 CPU) per-frame minimum 0.96, mean
# 0.98 or more for every predictor below; the bounds leave room for other CPUs' bf16 kernels.
MIN_MEAN_IOU, MIN_FRAME_IOU = 0.9, 0.8


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    "dtype, name",
    [("auto", "auto"), ("float32", "float32"), ("bfloat16", "bfloat16")]
    + [(torch.float32, "float32"), (torch.bfloat16, "bfloat16")],
)
def test_check_dtype_accepts_the_policy_names_and_their_torch_dtypes(dtype, name: str) -> None:
    assert check_dtype(dtype) == name
    assert name in DTYPE_CHOICES


@pytest.mark.parametrize(
    "dtype, shown", [("float16", "'float16'"), ("fp32", "'fp32'"), (torch.float16, "torch.float16")]
)
def test_check_dtype_rejects_other_values_by_name(dtype, shown: str) -> None:
    with pytest.raises(ValueError, match=f"{shown}.*auto, float32, bfloat16"):
        check_dtype(dtype)


def test_explicit_dtypes_resolve_as_asked_on_any_device() -> None:
    for device in ("cpu", "cuda", torch.device("cuda", 1)):
        fp32 = resolve_precision("float32", device)
        assert (fp32.dtype, fp32.name, fp32.short) == (torch.float32, "float32", "fp32")
        bf16 = resolve_precision(torch.bfloat16, device)
        assert (bf16.dtype, bf16.name, bf16.short) == (torch.bfloat16, "bfloat16", "bf16")
        assert fp32.device_type == bf16.device_type == torch.device(device).type
    with resolve_precision("float32", "cpu").autocast():
        assert not torch.is_autocast_enabled("cpu")
    with resolve_precision("bfloat16", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_auto_is_bf16_on_cuda() -> None:
    """Resolution only: no GPU is needed to resolve for a CUDA device."""
    for device in ("cuda", "cuda:1"):
        precision = resolve_precision("auto", device)
        assert (precision.dtype, precision.device_type) == (torch.bfloat16, "cuda")
        assert "CUDA" in precision.reason


@pytest.mark.parametrize("native", ["amx", "avx512_bf16", "arm_bf16", None])
def test_auto_on_cpu_follows_native_bf16_support(monkeypatch: pytest.MonkeyPatch, native) -> None:
    monkeypatch.setattr(sam2.precision, "cpu_bf16_support", lambda: native)
    precision = resolve_precision("auto", "cpu")
    assert precision.dtype == (torch.float32 if native is None else torch.bfloat16)
    assert precision.requested == "auto" and precision.device_type == "cpu"
    if native is not None:
        assert native in precision.reason
    # Explicit requests do not ask the CPU.
    assert resolve_precision("float32", "cpu").dtype == torch.float32
    assert resolve_precision("bfloat16", "cpu").dtype == torch.bfloat16


def test_auto_elsewhere_is_float32() -> None:
    assert resolve_precision("auto", "meta").dtype == torch.float32


def test_summary_records_dtype_request_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sam2.precision, "cpu_bf16_support", lambda: None)
    auto = resolve_precision("auto", "cpu")
    assert auto.summary() == {"dtype": "float32", "requested": "auto", "reason": "CPU without native bf16"}
    bf16 = resolve_precision("bfloat16", "cpu")
    assert bf16.summary() == {"dtype": "bfloat16", "requested": "bfloat16", "reason": "bfloat16 requested"}
    assert json.loads(json.dumps(bf16.summary())) == bf16.summary()
    cuda = Precision("auto", torch.bfloat16, "cuda", "CUDA: bf16 autocast as upstream")
    assert cuda.summary() == {"dtype": "bfloat16", "requested": "auto", "reason": cuda.reason}


# --------------------------------------------------------------------------- shared models and runs


@pytest.fixture(scope="module")
def frames(first_frames) -> Path:
    return first_frames(NUM_FRAMES)


@pytest.fixture(scope="module")
def ckpt(make_checkpoint) -> Path:
    # Object score clearly "present": masks are real logits on every frame (not the constant
    # absent mask, which would agree trivially).
    return make_checkpoint(CFG, seed=0, obj_score_bias=5.0)


@pytest.fixture(scope="module")
def video_predictor(ckpt: Path) -> Callable[[str, str], torch.nn.Module]:
    """``video_predictor(kind, dtype)``: the SAM 2 or SAM2Long (P=3) predictor, built once."""
    made: dict[tuple[str, str], torch.nn.Module] = {}

    def get(kind: str, dtype: str) -> torch.nn.Module:
        if (kind, dtype) not in made:
            common = dict(
                device="cpu", hydra_overrides_extra=OVERRIDES, apply_postprocessing=False, dtype=dtype
            )
            if kind == "sam2":
                made[kind, dtype] = build_sam2_video_predictor(CFG, ckpt, **common)
            else:
                made[kind, dtype] = build_sam2long_video_predictor(CFG, ckpt, num_pathways=3, **common)
        return made[kind, dtype]

    return get


def _prompted_state(predictor, frames: Path, frame_idx: int) -> dict:
    state = predictor.init_state(str(frames))
    for obj_id, prompt in ((1, dict(points=[CLICK], labels=[1])), (2, dict(box=BOX))):
        _, _, masks = predictor.add_new_points_or_box(state, frame_idx, obj_id, **prompt)
        assert masks.dtype == torch.float32
    return state


def _track(predictor, frames: Path, reverse: bool) -> dict[int, np.ndarray]:
    """Two objects (a click and a box) prompted on the first frame of the direction, tracked."""
    state = _prompted_state(predictor, frames, NUM_FRAMES - 1 if reverse else 0)
    out = {}
    for frame_idx, obj_ids, masks in predictor.propagate_in_video(state, reverse=reverse):
        assert list(obj_ids) == [1, 2]
        assert masks.dtype == torch.float32, f"frame {frame_idx}: masks handed out as {masks.dtype}"
        out[frame_idx] = (masks[:, 0] > 0).numpy()
    assert sorted(out) == list(range(NUM_FRAMES))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _check_agreement(label: str, fp32: dict, bf16: dict) -> None:
    """Per-frame, per-object IoU of bf16's masks with fp32's: printed and bounded.

    ``fp32`` / ``bf16`` map a frame to a sequence of boolean arrays (one mask per object). fp32's
    masks must be neither empty nor full, so the IoU is not agreement by default.
    """
    ious = {}
    for frame in sorted(fp32):
        for obj, (ref, ours) in enumerate(zip(fp32[frame], bf16[frame])):
            assert 0 < ref.sum() < ref.size, f"{label}: frame {frame} object {obj} has a trivial mask"
            ious[frame, obj] = _iou(ref, ours)
    values = list(ious.values())
    figures = (
        f"{label}: fp32 vs bf16 mask IoU mean {np.mean(values):.4f}, min {min(values):.4f}; "
        + ", ".join(f"f{f}o{o}={v:.3f}" for (f, o), v in ious.items())
    )
    print(figures)
    assert np.mean(values) >= MIN_MEAN_IOU and min(values) >= MIN_FRAME_IOU, figures


# --------------------------------------------------------------------------- autocast scope


def _first_linear(module: torch.nn.Module) -> torch.nn.Linear:
    return next(m for m in module.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("kind", ["sam2", "sam2long"])
def test_autocast_is_inside_the_computation_and_never_in_the_callers_loop(
    video_predictor, frames: Path, kind: str
) -> None:
    """bf16 autocast is on while the predictor computes (memory attention's projections run in bf16)
    and off in the caller's loop body between yields, also after the caller leaves the loop early."""
    predictor = video_predictor(kind, "bfloat16")
    autocast: list[tuple[bool, torch.dtype]] = []
    projected: list[torch.dtype] = []
    state = _prompted_state(predictor, frames, 0)
    assert not torch.is_autocast_enabled("cpu")
    in_loop = []
    hooks = [
        predictor.memory_attention.register_forward_hook(
            lambda m, i, out: autocast.append(
                (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
            )
        ),
        _first_linear(predictor.memory_attention).register_forward_hook(
            lambda m, i, out: projected.append(out.dtype)
        ),
    ]
    try:
        for _ in predictor.propagate_in_video(state, max_frame_num_to_track=2):
            in_loop.append(torch.is_autocast_enabled("cpu"))
            assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
        for _ in predictor.propagate_in_video(state, max_frame_num_to_track=2):
            break
        in_loop.append(torch.is_autocast_enabled("cpu"))
    finally:
        for hook in hooks:
            hook.remove()
    assert in_loop == [False] * 4
    assert len(autocast) >= 2, "memory attention ran on the two tracked frames"
    assert set(autocast) == {(True, torch.bfloat16)} and set(projected) == {torch.bfloat16}, (
        autocast,
        projected,
    )


def test_float32_predictor_does_not_autocast(video_predictor, frames: Path) -> None:
    predictor = video_predictor("sam2", "float32")
    projected: list[torch.dtype] = []
    hook = _first_linear(predictor.memory_attention).register_forward_hook(
        lambda m, i, out: projected.append(out.dtype)
    )
    try:
        state = _prompted_state(predictor, frames, 0)
        for _ in predictor.propagate_in_video(state, max_frame_num_to_track=2):
            pass
    finally:
        hook.remove()
    assert projected and set(projected) == {torch.float32}


# --------------------------------------------------------------------------- bf16 end to end


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", ["sam2", "sam2long"])
def test_video_predictors_in_bf16_agree_with_float32(
    video_predictor, frames: Path, kind: str, reverse: bool
) -> None:
    runs = {dtype: _track(video_predictor(kind, dtype), frames, reverse) for dtype in DTYPES}
    label = f"{kind} {'reverse' if reverse else 'forward'}"
    _check_agreement(label, runs["float32"], runs["bfloat16"])


def test_image_predictor_in_bf16_agrees_with_float32(ckpt: Path, frames: Path) -> None:
    image = np.array(Image.open(sorted(frames.glob("*.jpg"))[0]).convert("RGB"))
    results = {}
    for dtype in DTYPES:
        predictor = SAM2ImagePredictor(
            build_sam2(CFG, ckpt, device="cpu", hydra_overrides_extra=OVERRIDES, dtype=dtype)
        )
        assert predictor.precision.name == dtype
        predictor.set_image(image)
        results[dtype] = [
            predictor.predict(
                point_coords=np.array([CLICK]), point_labels=np.array([1]), multimask_output=True
            ),
            predictor.predict(box=np.array(BOX), multimask_output=True),
        ]
    for prompt, (ref, ours) in enumerate(zip(results["float32"], results["bfloat16"])):
        for array in ours:
            assert isinstance(array, np.ndarray) and array.dtype == np.float32, array.dtype
        assert [a.shape for a in ours] == [a.shape for a in ref] == [(3, 270, 480), (3,), (3, 64, 64)]
        # Predicted IoUs: measured differences up to 0.002.
        assert np.abs(ours[1] - ref[1]).max() < 0.05, (ref[1], ours[1])
        _check_agreement(f"image predictor prompt {prompt}", {0: ref[0] > 0}, {0: ours[0] > 0})


def _segment_masks(out: Path) -> dict[int, list[np.ndarray]]:
    return {
        frame: [read_mask(out / "masks" / f"{obj:03d}" / f"{frame:05d}.png") > 0 for obj in (1, 2)]
        for frame in range(NUM_FRAMES)
    }


def test_segment_command_in_bf16(
    ckpt: Path, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = ["--config", CFG, "--checkpoint", str(ckpt), "--hydra_overrides", *OVERRIDES, "--device", "cpu"]
    prompts = ["--frame", "0", "--obj", "1", "--point", "{},{}".format(*CLICK)]
    prompts += ["--obj", "2", "--box", ",".join(map(str, BOX))]
    masks = {}
    for dtype in DTYPES:
        out = tmp_path / dtype
        assert (
            sam2long_main(["segment", str(frames), "--out", str(out), *prompts, *model, "--dtype", dtype])
            == 0
        )
        summary = json.loads((out / "summary.json").read_text())
        assert summary["precision"] == {"dtype": dtype, "requested": dtype, "reason": f"{dtype} requested"}
        assert ("[bf16]" if dtype == "bfloat16" else "[fp32]") in capsys.readouterr().err  # progress line
        assert summary["trackers"]["sam2long"]["frames_tracked"] == NUM_FRAMES
        masks[dtype] = _segment_masks(out)
    _check_agreement("sam2long segment", masks["float32"], masks["bfloat16"])


@pytest.fixture(scope="module")
def vos_dataset(frames: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-object layout: one video of the 6 frames, two rectangles given on its first frame.

    Per-object PNGs keep each object's own mask (no non-overlap): with random weights both objects'
    masks cover much the same pixels, and which of them wins a pixel of a label map is decided by
    near-equal logits, in any precision.
    """
    root = tmp_path_factory.mktemp("vos")
    video = root / "JPEGImages" / "bedroom"
    video.mkdir(parents=True)
    for index, frame in enumerate(sorted(frames.glob("*.jpg"))):
        (video / f"{index:05d}.jpg").write_bytes(frame.read_bytes())
    for obj, (top, bottom, left, right) in {1: (60, 200, 40, 160), 2: (80, 220, 260, 400)}.items():
        mask = np.zeros((270, 480), dtype=np.uint8)
        mask[top:bottom, left:right] = 1
        folder = root / "Annotations" / "bedroom" / f"{obj:03d}"
        folder.mkdir(parents=True)
        Image.fromarray(mask).save(folder / "00000.png")
    return root


def test_vos_command_in_bf16(
    ckpt: Path, vos_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # not under torchrun
        monkeypatch.delenv(name, raising=False)
    masks = {}
    for dtype in DTYPES:
        out = tmp_path / dtype / "masks"
        args = ["--sam2_cfg", CFG, "--sam2_checkpoint", str(ckpt), "--hydra_overrides", *OVERRIDES]
        args += ["--device", "cpu", "--base_video_dir", str(vos_dataset / "JPEGImages")]
        args += ["--input_mask_dir", str(vos_dataset / "Annotations"), "--output_mask_dir", str(out)]
        assert vos_cli.main([*args, "--per_obj_png_file", "--num_pathway", "3", "--dtype", dtype]) == 0
        summary = json.loads((Path(f"{out.resolve()}.state") / "summary.json").read_text())
        assert summary["settings"]["precision"]["dtype"] == summary["settings"]["dtype"] == dtype
        assert summary["videos"]["bedroom"]["status"] == "done"
        # a resume marker counts only for the dtype really computed in
        other = "float32" if dtype == "bfloat16" else "bfloat16"
        assert vos_cli.main([*args, "--per_obj_png_file", "--num_pathway", "3", "--dtype", dtype]) == 0
        resumed = json.loads((Path(f"{out.resolve()}.state") / "summary.json").read_text())
        assert resumed["videos"]["bedroom"]["status"] == "skipped"
        assert vos_cli.main([*args, "--per_obj_png_file", "--num_pathway", "3", "--dtype", other]) == 0
        redone = json.loads((Path(f"{out.resolve()}.state") / "summary.json").read_text())
        assert redone["videos"]["bedroom"]["status"] == "done"
        assert vos_cli.main([*args, "--per_obj_png_file", "--num_pathway", "3", "--dtype", dtype]) == 0
        names = [f"{i:05d}.png" for i in range(NUM_FRAMES)]
        for obj in ("001", "002"):
            assert sorted(p.name for p in (out / "bedroom" / obj).glob("*.png")) == names
        masks[dtype] = {
            i: [np.array(Image.open(out / "bedroom" / obj / name)) > 0 for obj in ("001", "002")]
            for i, name in enumerate(names)
        }
    _check_agreement("sam2long-vos", masks["float32"], masks["bfloat16"])


# --------------------------------------------------------------------------- devices


def test_position_encoding_cache_follows_the_device_it_is_used_on() -> None:
    """The grid cache moves to the model's device once instead of being copied there on every call."""
    encoding = PositionEmbeddingSine(64, warmup_cache=False)
    on_cpu = encoding(torch.zeros(2, 8, 4, 4))
    assert on_cpu.shape == (2, 64, 4, 4) and encoding.cache[4, 4].device.type == "cpu"
    on_meta = encoding(torch.zeros(1, 8, 4, 4, device="meta"))
    assert on_meta.device.type == "meta" and encoding.cache[4, 4].device.type == "meta"
