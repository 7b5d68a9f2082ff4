"""Tests of dataset VOS inference: the library ``sam2long.vos`` and its script ``tools/vos_inference.py``.

The first part checks the file-level logic without a model (output PNGs, listing, sharding,
resume markers, input-mask collection) and the command line's tracker choice. The second part
runs the command line on tiny datasets built from the real test frames, with a tiny
random-weight model at 256 px, for SAM 2 (``--tracker sam2``) and SAM2Long (``--num_pathway 3``):
in-process through ``sam2long.vos.cli.main`` and, where a separate process is the point (the
script itself, a killed run and the byte-identical resume of its reference), through
``python tools/vos_inference.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from sam2.modeling.sam2_base import NO_OBJ_SCORE
from sam2.modeling.sam2_utils import apply_non_overlapping_constraints
from sam2long import mask_io
from sam2long.export import PalettePngWriter, PerObjectPngWriter
from sam2long.mask_io import DAVIS_PALETTE, read_mask_with_palette
from sam2long.vos import cli, protocol
from sam2long.vos.dataset import (
    DoneMarkers,
    MaskFolder,
    MaskInputs,
    VosInputError,
    collect_inputs,
    list_video_names,
    resolve_shards,
    resolve_video,
    shard_of,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "vos_inference.py"
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
# A palette that is not DAVIS's, to check that outputs keep the input palette.
CUSTOM_PALETTE = [0, 0, 0, 200, 10, 10, 10, 200, 10, 30, 30, 220]
# Two objects on the 480x270 bedroom frames: (top, bottom, left, right).
RECTS = {1: (60, 200, 40, 160), 2: (80, 220, 260, 400)}


# --------------------------------------------------------------------------- helpers


def rect_labels(height: int, width: int, rects: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    labels = np.zeros((height, width), dtype=np.uint8)
    for obj_id, (top, bottom, left, right) in rects.items():
        labels[top:bottom, left:right] = obj_id
    return labels


def save_png(path: Path, labels: np.ndarray, palette: list[int] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)


def copy_frames(frames: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        shutil.copy(frame, folder / f"{index:05d}.jpg")


def write_mp4(frames: list[Path], path: Path) -> None:
    import cv2

    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 6, (first.shape[1], first.shape[0]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.imread(str(frame)))
    writer.release()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{mask_io.TEMP_PREFIX}*") if p.is_file()]


def read_summary(output_dir: Path, name: str = "summary.json") -> dict:
    return json.loads((Path(f"{output_dir.resolve()}.state") / name).read_text())


@pytest.fixture(scope="module")
def frames(bedroom_dir: Path) -> list[Path]:
    return sorted(bedroom_dir.glob("*.jpg"))[:8]


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random weights whose object-score head always says "present".

    Random weights alone predict "no object" after the prompted frame, so every output would be
    empty; a large object-score bias makes the tracked masks non-trivial.
    """
    state = torch.load(make_checkpoint(CONFIG), map_location="cpu", weights_only=True)
    state["model"]["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(20.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_present.pt"
    torch.save(state, path)
    return path


def cli_args(checkpoint: Path, root: Path, output: Path, *extra: str) -> list[str]:
    """Command-line flags of a run on the dataset at ``root``."""
    return [
        "--sam2_cfg",
        CONFIG,
        "--sam2_checkpoint",
        str(checkpoint),
        "--hydra_overrides",
        *OVERRIDES,
        "--device",
        "cpu",
        "--base_video_dir",
        str(root / "JPEGImages"),
        "--input_mask_dir",
        str(root / "Annotations"),
        "--output_mask_dir",
        str(output),
        *extra,
    ]


def script(checkpoint: Path, root: Path, output: Path, *extra: str) -> list[str]:
    """The same run as a separate process of ``tools/vos_inference.py``."""
    return [sys.executable, str(SCRIPT), *cli_args(checkpoint, root, output, *extra)]


@dataclass
class Run:
    returncode: int
    stderr: str


def run_main(args: list[str], capsys: pytest.CaptureFixture | None = None, **environ: str) -> Run:
    """Run ``sam2long.vos.cli.main`` in this process, without torchrun's variables unless given
    in ``environ``; ``capsys`` collects its log (stderr)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            patch.delenv(name, raising=False)
        for name, value in environ.items():
            patch.setenv(name, value)
        returncode = cli.main(args)
    return Run(returncode, capsys.readouterr().err if capsys is not None else "")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def run_cli(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=env or cli_env(), capture_output=True, text=True, timeout=600, cwd=REPO, check=False
    )


# --------------------------------------------------------------------------- output PNGs
# (palette, PNG encoding, atomic writes, merge/split: tests/test_mask_io.py)


def test_mask_writer_layouts(tmp_path: Path):
    masks = {1: np.ones((1, 3, 4), bool), 7: np.zeros((1, 3, 4), bool)}
    single = PalettePngWriter(tmp_path / "a", size=(3, 4), palette=CUSTOM_PALETTE)
    assert single.write("00003", masks) == tmp_path / "a" / "00003.png"
    labels, palette = read_mask_with_palette(tmp_path / "a" / "00003.png")
    assert np.array_equal(labels, np.ones((3, 4), np.uint8)) and palette[:12] == CUSTOM_PALETTE
    per_obj = PerObjectPngWriter(tmp_path / "b", size=(3, 4), palette=DAVIS_PALETTE)
    assert per_obj.write("00003", masks) == [
        tmp_path / "b" / "001" / "00003.png",
        tmp_path / "b" / "007" / "00003.png",
    ]
    labels, palette = read_mask_with_palette(tmp_path / "b" / "007" / "00003.png")
    assert labels.max() == 0 and bytes(palette[:12]) == DAVIS_PALETTE[:12]
    assert temp_files(tmp_path) == []


# --------------------------------------------------------------------------- listing, shards, markers


def test_video_listing_and_resolution(tmp_path: Path):
    base = tmp_path / "videos"
    for name in ("b", "a", ".hidden"):
        (base / name).mkdir(parents=True)
    (base / "c.mp4").write_bytes(b"")
    (base / "notes.txt").write_text("")
    assert list_video_names(base, None) == ["a", "b", "c"]

    listing = tmp_path / "list.txt"
    listing.write_text("b\n\n# comment\n a/ \nb\nc.mp4\nmissing\n")
    assert list_video_names(base, listing) == ["b", "a", "c", "missing"]

    assert resolve_video(base, "a").path == base / "a"
    assert resolve_video(base, "c").path == base / "c.mp4"
    with pytest.raises(VosInputError, match="'missing'"):
        resolve_video(base, "missing")
    with pytest.raises(VosInputError, match="does not exist"):
        list_video_names(tmp_path / "nowhere", None)


@pytest.mark.parametrize("num_videos", [0, 1, 5, 7])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
def test_shards_partition_the_videos(num_videos: int, num_shards: int):
    names = [f"video{i}" for i in range(num_videos)]
    shards = [shard_of(names, num_shards, shard_id) for shard_id in range(num_shards)]
    assert sorted(sum(shards, [])) == sorted(names)
    assert sum(len(s) for s in shards) == len(names)  # no video in two shards
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [shard_of(names, num_shards, i) for i in range(num_shards)]  # deterministic


def test_shard_arguments_and_torchrun_environment():
    with pytest.raises(ValueError, match="shard_id"):
        shard_of(["a"], 2, 2)
    with pytest.raises(ValueError, match="num_shards"):
        shard_of(["a"], 0, 0)
    base = ["--base_video_dir", "x", "--input_mask_dir", "y", "--output_mask_dir", "z"]
    parser = cli.build_parser()

    def shards(argv: list[str], environ: dict[str, str]) -> tuple[int, int]:
        args = parser.parse_args(argv)
        return resolve_shards(args.num_shards, args.shard_id, environ)

    assert shards(base, {}) == (1, 0)
    assert shards(base, {"RANK": "3"}) == (1, 0)  # torchrun sets both
    assert shards(base, {"RANK": "3", "WORLD_SIZE": "4"}) == (4, 3)
    with pytest.raises(ValueError, match=r"\$WORLD_SIZE and \$RANK must be integers, got 'x'"):
        shards(base, {"RANK": "0", "WORLD_SIZE": "x"})
    assert shards([*base, "--num_shards", "2", "--shard_id", "1"], {"RANK": "3", "WORLD_SIZE": "4"}) == (2, 1)


def test_invalid_shard_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "videos" / "a").mkdir(parents=True)
    args = ["--base_video_dir", str(tmp_path / "videos"), "--input_mask_dir", str(tmp_path)]
    args += ["--output_mask_dir", str(tmp_path / "out"), "--num_shards", "2", "--shard_id", "5"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert "shard_id must be in [0, 2)" in capsys.readouterr().err


def test_done_markers_define_completeness(tmp_path: Path):
    out = tmp_path / "out"
    markers = DoneMarkers(tmp_path / "state", out)
    fingerprint = {"score_thresh": 0.0, "tracker": "sam2long", "memory_modulation": (0.95, 1.05)}
    assert markers.complete("v", fingerprint) is None
    save_png(out / "v" / "00000.png", np.zeros((2, 2), np.uint8), CUSTOM_PALETTE)
    save_png(out / "v" / "00001.png", np.zeros((2, 2), np.uint8), CUSTOM_PALETTE)
    markers.write("v", fingerprint, ["00001.png", "00000.png"], {"frames": 2})
    assert markers.complete("v", fingerprint)["stats"] == {"frames": 2}
    assert markers.complete("v", {**fingerprint, "score_thresh": 0.5}) is None  # other settings
    (out / "v" / "00001.png").unlink()
    assert markers.complete("v", fingerprint) is None  # an output went missing
    markers.path("v").write_text("{trunc")
    assert markers.complete("v", fingerprint) is None  # unreadable marker
    markers.clear("v")
    assert not markers.path("v").exists()


# --------------------------------------------------------------------------- input masks


def _folder(root: Path, video: str, per_obj: bool = False, size: tuple[int, int] = (20, 30)) -> MaskFolder:
    return MaskFolder(root=root / video, video=video, per_obj_png_file=per_obj, frame_size=size)


NAMES = ["00000", "00001", "00002", "00003"]


def test_first_frame_inputs_and_their_errors(tmp_path: Path):
    save_png(
        tmp_path / "v" / "00000.png", rect_labels(20, 30, {1: (0, 5, 0, 5), 2: (6, 9, 6, 9)}), CUSTOM_PALETTE
    )
    inputs = collect_inputs(
        _folder(tmp_path, "v"), NAMES, use_all_masks=False, track_object_appearing_later=False
    )
    assert inputs.object_ids == [1, 2] and list(inputs.masks[2]) == [0]
    assert inputs.masks[1][0].sum() == 25 and inputs.palette[:12] == CUSTOM_PALETTE

    save_png(tmp_path / "late" / "00002.png", rect_labels(20, 30, {1: (0, 5, 0, 5)}), None)
    with pytest.raises(
        VosInputError, match="'late'.*missing first-frame mask.*'00000'.*track_object_appearing"
    ):
        collect_inputs(_folder(tmp_path, "late"), NAMES, False, False)
    with pytest.raises(VosInputError, match="'nomask'.*mask folder .* does not exist"):
        collect_inputs(_folder(tmp_path, "nomask"), NAMES, False, False)

    save_png(tmp_path / "big" / "00000.png", np.ones((21, 30), np.uint8), None)
    with pytest.raises(VosInputError, match=r"'big'.*'00000'.*00000.png is 30x21 \(WxH\).*30x20"):
        collect_inputs(_folder(tmp_path, "big"), NAMES, False, False)

    save_png(tmp_path / "blank" / "00000.png", np.zeros((20, 30), np.uint8), None)
    with pytest.raises(VosInputError, match="'blank'.*contains no object"):
        collect_inputs(_folder(tmp_path, "blank"), NAMES, False, False)


def test_use_all_masks_inputs_and_unknown_object(tmp_path: Path):
    save_png(tmp_path / "v" / "00000.png", rect_labels(20, 30, {1: (0, 5, 0, 5)}), None)
    save_png(tmp_path / "v" / "00002.png", rect_labels(20, 30, {1: (2, 6, 2, 6)}), None)
    inputs = collect_inputs(
        _folder(tmp_path, "v"), NAMES, use_all_masks=True, track_object_appearing_later=False
    )
    assert sorted(inputs.masks[1]) == [0, 2] and inputs.palette is None
    save_png(tmp_path / "v" / "00003.png", rect_labels(20, 30, {1: (0, 5, 0, 5), 3: (8, 9, 8, 9)}), None)
    with pytest.raises(VosInputError, match=r"'v', frame '00003': unknown object id 3 .*objects \[1\]"):
        collect_inputs(_folder(tmp_path, "v"), NAMES, True, False)
    (tmp_path / "none").mkdir()
    with pytest.raises(VosInputError, match="'none': no input mask for any frame"):
        collect_inputs(_folder(tmp_path, "none"), NAMES, True, False)


def test_later_objects_start_on_their_first_non_empty_mask(tmp_path: Path):
    save_png(tmp_path / "v" / "00001.png", rect_labels(20, 30, {2: (0, 5, 0, 5)}), None)
    save_png(tmp_path / "v" / "00003.png", rect_labels(20, 30, {2: (1, 5, 0, 5), 5: (8, 12, 8, 12)}), None)
    first = collect_inputs(
        _folder(tmp_path, "v"), NAMES, use_all_masks=False, track_object_appearing_later=True
    )
    assert {obj: sorted(f) for obj, f in first.masks.items()} == {2: [1], 5: [3]}
    every = collect_inputs(
        _folder(tmp_path, "v"), NAMES, use_all_masks=True, track_object_appearing_later=True
    )
    assert {obj: sorted(f) for obj, f in every.masks.items()} == {2: [1, 3], 5: [3]}
    (tmp_path / "e").mkdir()
    save_png(tmp_path / "e" / "00000.png", np.zeros((20, 30), np.uint8), None)
    with pytest.raises(VosInputError, match="'e': no non-empty object mask"):
        collect_inputs(_folder(tmp_path, "e"), NAMES, False, True)


def test_per_object_layout_inputs(tmp_path: Path):
    box = rect_labels(20, 30, {1: (0, 5, 0, 5)})
    save_png(tmp_path / "s" / "001" / "00000.png", box, None)
    save_png(tmp_path / "s" / "004" / "00000.png", np.zeros((20, 30), np.uint8), None)
    save_png(tmp_path / "s" / "004" / "00002.png", box * 255, None)
    (tmp_path / "s" / "notes").mkdir()  # not an object folder
    inputs = collect_inputs(_folder(tmp_path, "s", per_obj=True), NAMES, False, False)
    assert inputs.object_ids == [1, 4] and not inputs.masks[4][0].any()
    later = collect_inputs(_folder(tmp_path, "s", per_obj=True), NAMES, False, True)
    assert {obj: sorted(f) for obj, f in later.masks.items()} == {1: [0], 4: [2]}
    assert np.array_equal(later.masks[4][2], box > 0)
    (tmp_path / "s" / "001" / "00000.png").unlink()
    with pytest.raises(VosInputError, match=r"'s', object 1: input mask .*001.00000.png"):
        collect_inputs(_folder(tmp_path, "s", per_obj=True), NAMES, False, False)


def test_input_masks_follow_the_one_reading_rule(tmp_path: Path):
    """Grey masks saved as RGB are read as grey values; colour or unreadable masks are input errors
    naming the video, frame and file; 16-bit object ids are kept, not wrapped."""
    labels = rect_labels(20, 30, {1: (0, 5, 0, 5), 2: (6, 9, 6, 9)})
    (tmp_path / "grey").mkdir()
    Image.fromarray(np.stack([labels] * 3, axis=-1)).save(tmp_path / "grey" / "00000.png")
    inputs = collect_inputs(_folder(tmp_path, "grey"), NAMES, False, False)
    assert inputs.object_ids == [1, 2] and inputs.masks[2][0].sum() == 9 and inputs.palette is None

    colour = np.zeros((20, 30, 3), np.uint8)
    colour[0:5, 0:5] = (128, 0, 0)
    (tmp_path / "colour").mkdir()
    Image.fromarray(colour).save(tmp_path / "colour" / "00000.png")
    with pytest.raises(
        VosInputError, match=r"'colour', frame '00000': .*colour.00000\.png is a colour image"
    ):
        collect_inputs(_folder(tmp_path, "colour"), NAMES, False, False)

    save_png(tmp_path / "bad" / "00000.png", labels, None)
    (tmp_path / "bad" / "00000.png").write_bytes(b"not a png")
    with pytest.raises(VosInputError, match=r"'bad', frame '00000': cannot read mask file .*bad.00000\.png"):
        collect_inputs(_folder(tmp_path, "bad"), NAMES, False, False)

    wide = np.zeros((20, 30), np.uint16)
    wide[0:5, 0:5] = 300
    (tmp_path / "wide").mkdir()
    Image.fromarray(wide).save(tmp_path / "wide" / "00000.png")
    assert collect_inputs(_folder(tmp_path, "wide"), NAMES, False, False).object_ids == [300]


# --------------------------------------------------------------------------- tracker choice

BASE_ARGS = ["--base_video_dir", "x", "--input_mask_dir", "y", "--output_mask_dir", "z"]


def tracker_of(*flags: str):
    parser = cli.build_parser()
    argv = [*BASE_ARGS, *flags]
    return cli.resolve_tracker(parser.parse_args(argv), cli.given_tree_flags(parser, argv))


def test_tracker_flag_and_one_meaning_of_one_pathway():
    default = tracker_of()
    assert default.tracker == "sam2long" and default.describe()["tracker"] == "sam2long"
    settings = default.sam2long_config
    assert (settings.num_pathways, settings.iou_threshold, settings.uncertainty) == (3, 0.1, 2.0)
    one = tracker_of("--num_pathway", "1")  # SAM2Long with one pathway, as in the library
    assert one.tracker == "sam2long" and one.sam2long_config.num_pathways == 1
    assert one.describe()["num_pathways"] == 1 and one.sam2long_config.memory_selection
    sam2 = tracker_of("--tracker", "sam2")
    assert sam2.sam2long_config is None and sam2.describe() == {"tracker": "sam2", "preset": None}
    assert tracker_of("--tracker", "sam2", "--use_vos_optimized_video_predictor").vos_optimized
    paper = tracker_of("--preset", "paper", "--uncertainty", "1")
    settings = paper.sam2long_config
    assert (settings.iou_threshold, settings.uncertainty, paper.preset) == (0.3, 1.0, "paper")
    assert paper.describe()["preset"] == "paper" and paper.fingerprint()["iou_threshold"] == 0.3
    with pytest.raises(ValueError, match="unknown SAM2Long preset"):
        tracker_of("--preset", "nope")


def test_tree_flags_and_vos_optimized_need_the_right_tracker(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(ValueError, match="--tracker sam2 takes no SAM2Long tree flags, got --num_pathways"):
        tracker_of("--tracker", "sam2", "--num_pathway", "1")
    with pytest.raises(ValueError, match="got --preset, --iou_threshold"):
        tracker_of("--tracker", "sam2", "--iou_thre", "0.2", "--preset", "official")
    with pytest.raises(
        ValueError, match="--use_vos_optimized_video_predictor is only available with --tracker sam2"
    ):
        tracker_of("--use_vos_optimized_video_predictor")
    assert cli.given_tree_flags(cli.build_parser(), [*BASE_ARGS, "--tracker", "sam2"]) == []

    (tmp_path / "videos" / "a").mkdir(parents=True)
    args = ["--base_video_dir", str(tmp_path / "videos"), "--input_mask_dir", str(tmp_path)]
    args += ["--output_mask_dir", str(tmp_path / "out"), "--tracker", "sam2", "--uncertainty", "1"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert "--tracker sam2 takes no SAM2Long tree flags, got --uncertainty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_non_overlap_keeps_only_the_best_object_per_pixel():
    """The rule the objects-appearing-later protocol applies across its groups."""
    scores = torch.tensor([[3.0, -2.0, 0.5], [1.0, 4.0, 0.5], [-5.0, -1.0, -20.0]]).reshape(3, 1, 1, 3)
    kept = apply_non_overlapping_constraints(scores).reshape(3, 3)
    expected = torch.tensor([[3.0, -10.0, 0.5], [-10.0, 4.0, -10.0], [-10.0, -10.0, -20.0]])
    assert torch.equal(kept, expected)  # ties go to the first object, as torch.argmax does
    single = torch.randn(1, 1, 2, 2)
    assert torch.equal(apply_non_overlapping_constraints(single), single)


# --------------------------------------------------------------------------- end to end (model)


@pytest.fixture(scope="module")
def davis(tmp_path_factory: pytest.TempPathFactory, frames: list[Path]) -> Path:
    """DAVIS layout: 'bedroom' (8 JPEGs, 2 objects, custom palette), 'clip' (mp4, 3 frames, gray mask)."""
    root = tmp_path_factory.mktemp("davis")
    copy_frames(frames, root / "JPEGImages" / "bedroom")
    write_mp4(frames[:3], root / "JPEGImages" / "clip.mp4")
    width, height = Image.open(frames[0]).size
    save_png(
        root / "Annotations" / "bedroom" / "00000.png", rect_labels(height, width, RECTS), CUSTOM_PALETTE
    )
    save_png(root / "Annotations" / "clip" / "00000.png", rect_labels(height, width, {1: RECTS[2]}), None)
    return root


SAM2 = ("--tracker", "sam2")
SAM2LONG_P3 = ("--num_pathway", "3")


@pytest.fixture(scope="module")
def tracked(davis: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """Uninterrupted runs on the DAVIS-layout dataset, one per tracker, made once: SAM 2 through
    the script (a separate process), SAM2Long in-process."""
    runs: dict[tuple[str, ...], tuple[Path, Run | subprocess.CompletedProcess]] = {}

    def get(tracker: tuple[str, ...]) -> tuple[Path, Run | subprocess.CompletedProcess]:
        if tracker not in runs:
            out = tmp_path_factory.mktemp("pred_" + "_".join(tracker).strip("-")) / "masks"
            if tracker == SAM2:
                runs[tracker] = (out, run_cli(script(checkpoint, davis, out, *tracker)))
            else:
                runs[tracker] = (out, run_main(cli_args(checkpoint, davis, out, *tracker)))
        return runs[tracker]

    return get


@pytest.mark.parametrize("tracker", [SAM2, SAM2LONG_P3], ids=["sam2", "sam2long_p3"])
def test_davis_layout_end_to_end(tracker: tuple[str, ...], tracked, davis: Path):
    out, result = tracked(tracker)
    assert result.returncode == 0, result.stderr[-3000:]
    given = np.array(Image.open(davis / "Annotations" / "bedroom" / "00000.png"))
    bedroom = sorted((out / "bedroom").iterdir())
    assert [p.name for p in bedroom] == [f"{i:05d}.png" for i in range(8)]
    for path in bedroom:
        image = Image.open(path)
        assert image.mode == "P" and image.size == (480, 270)
        assert image.getpalette()[: len(CUSTOM_PALETTE)] == CUSTOM_PALETTE
        assert set(np.unique(np.array(image))) <= {0, 1, 2}
    first = np.array(Image.open(bedroom[0]))
    for obj_id in (1, 2):
        assert iou(first == obj_id, given == obj_id) > 0.9  # the prompt frame reproduces its mask
    assert all(np.array(Image.open(p)).any() for p in bedroom[1:])  # objects are tracked onwards

    clip = sorted((out / "clip").iterdir())
    assert [p.name for p in clip] == ["00000.png", "00001.png", "00002.png"]
    for path in clip:
        image = Image.open(path)
        assert image.size == (480, 270) and bytes(image.getpalette()) == DAVIS_PALETTE
        assert set(np.unique(np.array(image))) <= {0, 1}

    summary = read_summary(out)
    assert summary["settings"]["tracker"] == ("sam2" if tracker == SAM2 else "sam2long")
    if tracker != SAM2:
        assert summary["settings"]["num_pathways"] == 3
    assert summary["totals"]["failed"] == 0 and summary["totals"]["frames"] == 11
    stats = summary["videos"]["bedroom"]
    assert (stats["status"], stats["frames"], stats["objects"]) == ("done", 8, 2)
    assert stats["seconds"] > 0 and stats["fps"] > 0 and stats["peak_mem_bytes"] > 0
    assert (summary["videos"]["clip"]["frames"], summary["videos"]["clip"]["objects"]) == (3, 1)


def test_killed_run_resumes_to_identical_outputs(tracked, davis: Path, checkpoint: Path, tmp_path: Path):
    reference, result = tracked(SAM2)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "masks"
    command = script(checkpoint, davis, out, *SAM2)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, env=cli_env(), stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 300
        while len(list((out / "bedroom").glob("*.png"))) < 2:
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    written = len(list((out / "bedroom").glob("*.png")))
    state = Path(f"{out.resolve()}.state")
    assert 2 <= written < 8 and not (state / "done" / "bedroom.json").exists()
    (out / "bedroom" / f"{mask_io.TEMP_PREFIX}killed{mask_io.TEMP_SUFFIX}").write_bytes(b"partial")

    # Resume with frames streamed from disk: outputs must not change (byte-identical below). A
    # separate process like the reference, so that both compute with the same thread settings.
    resumed = run_cli([*command, "--stream_frames"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    for relative in files:
        assert (out / relative).read_bytes() == (reference / relative).read_bytes(), relative
    assert temp_files(out) == [] and temp_files(state) == []

    again = run_main(command[2:])  # nothing left to run: in-process
    assert again.returncode == 0
    summary = read_summary(out)
    assert {name: v["status"] for name, v in summary["videos"].items()} == {
        "bedroom": "skipped",
        "clip": "skipped",
    }
    assert summary["videos"]["bedroom"]["frames"] == 8


@pytest.fixture(scope="module")
def small_frames(frames: list[Path]) -> list[Path]:
    return frames[:2]


def test_bad_inputs_fail_clearly_while_other_videos_complete(
    small_frames: list[Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    root = tmp_path / "data"
    width, height = Image.open(small_frames[0]).size
    good = rect_labels(height, width, {1: RECTS[1]})
    for name in ("good", "no_first_mask", "wrong_size", "corrupt_frame", "new_object"):
        copy_frames(small_frames, root / "JPEGImages" / name)
    (root / "JPEGImages" / "empty_video").mkdir()
    (root / "JPEGImages" / "corrupt_frame" / "00001.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for name in ("good", "corrupt_frame", "empty_video", "new_object"):
        save_png(root / "Annotations" / name / "00000.png", good, None)
    save_png(root / "Annotations" / "good" / "00001.png", good, None)
    save_png(root / "Annotations" / "no_first_mask" / "00001.png", good, None)
    save_png(root / "Annotations" / "wrong_size" / "00000.png", good[: height // 2], None)
    save_png(
        root / "Annotations" / "new_object" / "00001.png", rect_labels(height, width, {3: RECTS[2]}), None
    )
    listing = tmp_path / "list.txt"
    names = ["no_first_mask", "good", "wrong_size", "corrupt_frame", "empty_video", "ghost"]
    listing.write_text("\n".join(names) + "\n")

    out = tmp_path / "masks"
    result = run_main(cli_args(checkpoint, root, out, *SAM2, "--video_list_file", str(listing)), capsys)
    assert result.returncode == 1
    expected = {
        "no_first_mask": "missing first-frame mask, no input mask for frame '00000'",
        "wrong_size": f"00000.png is {width}x{height // 2} (WxH) but the video frames are {width}x{height}",
        "corrupt_frame": "cannot read frame file",
        "empty_video": "no JPEG or PNG frames found",
        "ghost": "neither a frame folder",
    }
    summary = read_summary(out)
    for name, phrase in expected.items():
        assert summary["videos"][name]["status"] == "failed"
        assert phrase in summary["videos"][name]["error"], summary["videos"][name]["error"]
        assert f"video {name!r} failed" in result.stderr and phrase in result.stderr
    assert "00001.jpg" in summary["videos"]["corrupt_frame"]["error"]
    assert summary["videos"]["good"]["status"] == "done"
    assert sorted(p.name for p in (out / "good").iterdir()) == ["00000.png", "00001.png"]

    out_all = tmp_path / "masks_all"
    listing.write_text("new_object\ngood\n")
    result = run_main(
        cli_args(checkpoint, root, out_all, *SAM2, "--video_list_file", str(listing), "--use_all_masks"),
        capsys,
    )
    assert result.returncode == 1
    summary = read_summary(out_all)
    assert "frame '00001': unknown object id 3" in summary["videos"]["new_object"]["error"]
    assert "video 'new_object' failed" in result.stderr
    assert summary["videos"]["good"]["status"] == "done"


def test_shard_from_torchrun_environment_processes_only_its_videos(
    small_frames: list[Path], checkpoint: Path, tmp_path: Path
):
    root = tmp_path / "data"
    width, height = Image.open(small_frames[0]).size
    for name in ("a", "b", "c"):
        copy_frames(small_frames, root / "JPEGImages" / name)
        save_png(root / "Annotations" / name / "00000.png", rect_labels(height, width, {1: RECTS[1]}), None)
    out = tmp_path / "masks"
    result = run_main(cli_args(checkpoint, root, out, *SAM2), RANK="1", WORLD_SIZE="2")
    assert result.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    summary = read_summary(out, "summary_shard1of2.json")
    assert list(summary["videos"]) == ["b"] and summary["settings"]["shard_id"] == 1


@pytest.mark.parametrize(
    "tracker", [SAM2, ("--num_pathway", "1"), SAM2LONG_P3], ids=["sam2", "sam2long_p1", "sam2long_p3"]
)
def test_per_object_pngs_with_objects_appearing_later(
    tracker: tuple[str, ...], frames: list[Path], checkpoint: Path, tmp_path: Path
):
    root = tmp_path / "data"
    copy_frames(frames[:4], root / "JPEGImages" / "sav")
    width, height = Image.open(frames[0]).size
    for index in range(4):
        first = rect_labels(height, width, {1: RECTS[1]})
        second = rect_labels(height, width, {1: RECTS[2]} if index >= 2 else {})
        save_png(root / "Annotations" / "sav" / "001" / f"{index:05d}.png", first, None)
        save_png(root / "Annotations" / "sav" / "002" / f"{index:05d}.png", second, None)
    out = tmp_path / "masks"
    command = cli_args(checkpoint, root, out, *tracker, "--per_obj_png_file")
    result = run_main([*command, "--track_object_appearing_later_in_video"])
    assert result.returncode == 0
    for obj in ("001", "002"):
        assert sorted(p.name for p in (out / "sav" / obj).iterdir()) == [f"{i:05d}.png" for i in range(4)]
    second = [np.array(Image.open(out / "sav" / "002" / f"{i:05d}.png")) for i in range(4)]
    assert not second[0].any() and not second[1].any()  # absent before its first mask
    assert set(np.unique(second[2])) <= {0, 1}
    assert iou(second[2] > 0, rect_labels(height, width, {1: RECTS[2]}) > 0) > 0.9
    summary = read_summary(out)
    assert summary["videos"]["sav"]["objects"] == 2
    assert summary["settings"]["tracker"] == ("sam2" if tracker == SAM2 else "sam2long")
    if tracker != SAM2:  # --num_pathway 1 is SAM2Long with one pathway, not plain SAM 2
        assert summary["settings"]["num_pathways"] == int(tracker[1])


def _build_predictor(checkpoint: Path, num_pathway: int):
    overrides = ["++model.non_overlap_masks=false", *OVERRIDES]
    if num_pathway == 1:
        from sam2.build_sam import build_sam2_video_predictor

        return build_sam2_video_predictor(
            CONFIG, str(checkpoint), device="cpu", hydra_overrides_extra=overrides
        )
    from sam2long import build_sam2long_video_predictor

    return build_sam2long_video_predictor(
        CONFIG,
        str(checkpoint),
        device="cpu",
        num_pathways=num_pathway,
        store_outputs=False,
        hydra_overrides_extra=overrides,
    )


@pytest.mark.parametrize("num_pathway", [1, 3])
def test_later_objects_in_one_session_equal_one_run_per_object(
    num_pathway: int, frames: list[Path], checkpoint: Path
):
    """All objects are tracked in one session, each joining on its first frame; the result must
    equal upstream's protocol of one propagation per object, merged with a -1024 fill and the
    model's non-overlap rule.

    SAM 2 tracks each object on its own, so the masks are identical. SAM2Long batches the
    pathways of all objects, which changes the logits by float rounding only (~1e-5): a pixel
    may then differ only where the expected decision is a near-tie (logit or winner margin
    below 1e-3).
    """
    predictor = _build_predictor(checkpoint, num_pathway)
    width, height = Image.open(frames[0]).size
    boxes = {1: RECTS[1], 2: RECTS[2], 3: (150, 260, 180, 300)}
    inputs = MaskInputs()
    for obj_id, first in ((1, 0), (2, 0), (3, 2)):
        inputs.add(obj_id, first, rect_labels(height, width, {1: boxes[obj_id]}) > 0)
    with torch.inference_mode():
        state = predictor.init_state(video_path=[np.array(Image.open(p)) for p in frames[:5]])
        grouped = dict(protocol.track_video(predictor, state, inputs, 0.0, True, True))

        scores = torch.full((3, 5, 1, height, width), NO_OBJ_SCORE)
        for row, obj_id in enumerate(inputs.object_ids):
            predictor.reset_state(state)
            first = inputs.first_frame(obj_id)
            predictor.add_new_mask(state, first, obj_id, inputs.masks[obj_id][first])
            for frame_idx, _, logits in predictor.propagate_in_video(state, start_frame_idx=first):
                scores[row, frame_idx] = logits[0]
    assert sorted(grouped) == list(range(5))
    for frame_idx in range(5):
        raw = scores[:, frame_idx]
        expected = apply_non_overlapping_constraints(raw) > 0
        top_two = raw.topk(2, dim=0).values
        for row, obj_id in enumerate(inputs.object_ids):
            differs = torch.from_numpy(grouped[frame_idx][obj_id] != expected[row].numpy())
            if num_pathway == 1:
                assert not differs.any(), (frame_idx, obj_id)
            else:
                margin = torch.minimum(raw[row].abs(), top_two[0] - top_two[1])
                assert (margin[differs] < 1e-3).all(), (frame_idx, obj_id, margin[differs].min())
                assert differs.sum() <= 10, (frame_idx, obj_id)
    assert not grouped[1][3].any() and grouped[2][3].any()


def test_truncated_video_file_keeps_its_decodable_frames_and_fails(checkpoint: Path, tmp_path: Path):
    """A video file cut mid-stream: the decodable frames get their masks, the video is marked failed
    naming the file and its last decodable frame, and it is not marked done (a resume runs it again)."""
    asset = Path(__file__).resolve().parent / "assets" / "bedroom_h264.mp4"
    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    data = asset.read_bytes()
    (root / "JPEGImages" / "cut.mp4").write_bytes(data[: int(len(data) * 0.2)])
    with av.open(str(asset)) as container:
        height, width = container.streams.video[0].height, container.streams.video[0].width
    save_png(root / "Annotations" / "cut" / "00000.png", rect_labels(height, width, {1: RECTS[1]}), None)
    out = tmp_path / "masks"
    with pytest.warns(UserWarning, match="truncated or damaged"):
        result = run_main(cli_args(checkpoint, root, out, *SAM2))
    assert result.returncode == 1
    summary = read_summary(out)
    entry = summary["videos"]["cut"]
    assert entry["status"] == "failed" and "cut.mp4 is truncated or damaged" in entry["error"]
    last = int(entry["error"].split("last decodable frame is ")[1].split()[0])
    assert 0 < last < 89
    assert sorted(p.stem for p in (out / "cut").glob("*.png")) == [f"{i:05d}" for i in range(last + 1)]
    assert not (Path(f"{out.resolve()}.state") / "done" / "cut.json").exists()
