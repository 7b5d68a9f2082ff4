"""End-to-end checks of the SA-V/LVOS evaluators and converters on the SA-V example annotation."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sam2long.mask_io import DAVIS_PALETTE, MaskError, read_mask, write_png
from sav_dataset import lvos_evaluator, sav_evaluator
from sav_dataset.utils.rle import counts_from_string, counts_to_string, decode_rle, encode_rle
from sav_dataset.utils.sav_annotations import load_sav_annotation, write_object_pngs
from sav_dataset.utils.video_frames import extract_frames

ASSET = Path(__file__).parent / "assets" / "sav_example" / "sav_000001_manual.json"
REPO = Path(__file__).resolve().parents[1]
VIDEO = "sav_000001"


@pytest.fixture(scope="module")
def gt_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sav") / "gt"
    write_object_pngs(load_sav_annotation(ASSET), root)
    return root


@pytest.fixture(scope="module")
def small_gt(gt_root, tmp_path_factory) -> Path:
    """Objects 001 (large) and 003 (enters late) only, to keep the many-prediction tests fast."""
    root = tmp_path_factory.mktemp("sav_small") / "gt"
    for obj in ("001", "003"):
        shutil.copytree(gt_root / VIDEO / obj, root / VIDEO / obj)
    return root


def make_prediction(gt_root: Path, out_root: Path, transform) -> Path:
    """Copy the GT layout, passing every mask through ``transform(mask, frame_pos, obj_id)``."""
    for obj_dir in sorted((gt_root / VIDEO).iterdir()):
        for pos, png in enumerate(sorted(obj_dir.iterdir())):
            mask = transform(read_mask(png) > 0, pos, int(obj_dir.name))
            if mask is not None:
                write_png(out_root / VIDEO / obj_dir.name / png.name, mask.astype(np.uint8) * 255)
    return out_root


def score(gt_root: Path, pred_root: Path) -> float:
    return sav_evaluator.evaluate(gt_root, pred_root).summary.jf


def erode(iterations: int):
    kernel = np.ones((3, 3), np.uint8)
    return lambda m, pos, obj: cv2.erode(m.astype(np.uint8), kernel, iterations=iterations) > 0


def shift(pixels: int):
    return lambda m, pos, obj: np.roll(m, (pixels, pixels), axis=(0, 1))


def test_converter_layout_and_round_trip(gt_root):
    annotation = load_sav_annotation(ASSET)
    assert (annotation.height, annotation.width, annotation.num_frames) == (848, 480, 16)
    objects = sorted(p.name for p in (gt_root / VIDEO).iterdir())
    assert objects == ["000", "001", "002", "003", "004"]
    # Every object starts at its first visible annotated frame; frames are numbered at 24 fps (x4).
    assert sorted(p.name for p in (gt_root / VIDEO / "000").iterdir())[:2] == ["00000.png", "00004.png"]
    late = sorted(p.name for p in (gt_root / VIDEO / "003").iterdir())
    assert late[0] == "00032.png" and late[-1] == "00060.png" and len(late) == 8
    # PNG -> RLE gives back the exact COCO strings of the JSON.
    raw = json.loads(ASSET.read_text())
    for obj_index, obj_id in enumerate(raw["masklet_id"]):
        for png in sorted((gt_root / VIDEO / f"{obj_id:03d}").iterdir()):
            rle = raw["masklet"][int(png.stem) // 4][obj_index]
            assert encode_rle(read_mask(png) > 0) == {"size": rle["size"], "counts": rle["counts"]}
    counts = counts_from_string(raw["masklet"][0][0]["counts"])
    assert sum(counts) == 848 * 480 and counts_to_string(counts) == raw["masklet"][0][0]["counts"]
    assert decode_rle({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [
        [False, True, False],
        [True, False, False],
    ]


def test_gt_against_itself_is_100(gt_root):
    results = sav_evaluator.evaluate(gt_root, gt_root)
    assert len(results.objects) == 5
    assert results.summary.j == 100.0 and results.summary.f == 100.0 and results.summary.jf == 100.0
    # Skipping first and last frames: 14 of 16 frames (object 003: 6 of 8).
    assert [len(o.j) for o in results.objects] == [14, 14, 14, 6, 14]


def test_degradations_are_ordered(small_gt, tmp_path):
    erode1 = score(small_gt, make_prediction(small_gt, tmp_path / "e1", erode(1)))
    erode4 = score(small_gt, make_prediction(small_gt, tmp_path / "e4", erode(4)))
    shift2 = score(small_gt, make_prediction(small_gt, tmp_path / "s2", shift(2)))
    shift10 = score(small_gt, make_prediction(small_gt, tmp_path / "s10", shift(10)))
    assert 100.0 > erode1 > erode4
    assert 100.0 > shift2 > shift10
    # Dropping predicted frames: missing files count as empty masks, exactly like written empty masks.
    drop_some = make_prediction(small_gt, tmp_path / "d1", lambda m, pos, obj: None if pos % 4 == 1 else m)
    drop_more = make_prediction(small_gt, tmp_path / "d2", lambda m, pos, obj: None if pos % 2 == 1 else m)
    empty_written = make_prediction(small_gt, tmp_path / "d1e", lambda m, pos, obj: m & (pos % 4 != 1))
    assert 100.0 > score(small_gt, drop_some) > score(small_gt, drop_more)
    assert score(small_gt, drop_some) == score(small_gt, empty_written)


def test_do_not_skip_first_and_last(small_gt, tmp_path):
    # Only the first frame of each object is wrong: invisible when skipped, penalised otherwise.
    pred = make_prediction(small_gt, tmp_path / "p", lambda m, pos, obj: np.zeros_like(m) if pos == 0 else m)
    assert sav_evaluator.evaluate(small_gt, pred).summary.jf == 100.0
    assert sav_evaluator.evaluate(small_gt, pred, skip_first_and_last=False).summary.jf < 100.0


def test_bad_masks_name_the_file(gt_root, tmp_path):
    pred = make_prediction(gt_root, tmp_path / "p", lambda m, pos, obj: m)
    small = pred / VIDEO / "001" / "00008.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    with pytest.raises(MaskError, match="00008.png.*size|size.*00008.png"):
        sav_evaluator.evaluate(gt_root, pred)
    small.write_bytes(b"not a png at all")
    with pytest.raises(MaskError, match="cannot read mask .*00008.png"):
        sav_evaluator.evaluate(gt_root, pred)


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_end_to_end(small_gt, tmp_path):
    pred = make_prediction(small_gt, tmp_path / "pred", erode(2))
    other = make_prediction(small_gt, tmp_path / "other", shift(6))
    csv_path, curve = tmp_path / "out" / "res.csv", tmp_path / "out" / "curve.png"
    proc = run_cli(
        "sav_dataset.sav_evaluator",
        *("--gt_root", str(small_gt), "--pred_root", str(pred), "--num_processes", "2"),
        *("--output_csv", str(csv_path), "--per_frame_curve", str(curve), "--extra_pred_roots", str(other)),
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert rows[0] == ["sequence", "obj", "J&F", "J", "F"]
    assert rows[1][0] == "Global score" and len(rows) == 2 + 2
    expected = sav_evaluator.evaluate(small_gt, pred).summary
    assert float(rows[1][2]) == pytest.approx(expected.jf, abs=1e-6)
    assert float(rows[1][3]) == pytest.approx(expected.j, abs=1e-6)
    assert (other / "results.csv").is_file()
    image = cv2.imread(str(curve))
    assert image is not None and image.shape[0] > 100
    curve_rows = curve.with_suffix(".csv").read_text().splitlines()
    assert curve_rows[0] == "t,pred,other" and len(curve_rows) == 21
    assert not [p for p in csv_path.parent.iterdir() if p.name.endswith(".tmp")]

    # --strict: a GT video without prediction is an error that names it.
    (small_gt.parent / "gt2").mkdir(exist_ok=True)
    strict_gt = small_gt.parent / "gt2"
    shutil.copytree(small_gt / VIDEO, strict_gt / VIDEO, dirs_exist_ok=True)
    shutil.copytree(small_gt / VIDEO, strict_gt / "sav_copy", dirs_exist_ok=True)
    proc = run_cli(
        "sav_dataset.sav_evaluator", "--gt_root", str(strict_gt), "--pred_root", str(pred), "--strict"
    )
    assert proc.returncode == 2 and "sav_copy" in proc.stderr
    proc = run_cli("sav_dataset.sav_evaluator", "--gt_root", str(strict_gt), "--pred_root", str(pred), "-q")
    assert proc.returncode == 0 and f"J&F {expected.jf:.2f}" in proc.stdout


def write_label_video(root: Path, video: str, frames: list[np.ndarray]) -> None:
    for t, labels in enumerate(frames):
        write_png(root / video / f"{5 * t:08d}.png", labels, DAVIS_PALETTE)


def blob(top: int, left: int, value: int, size: int = 12) -> np.ndarray:
    labels = np.zeros((48, 64), np.uint8)
    labels[top : top + size, left : left + size] = value
    return labels


def test_lvos_seen_unseen_split(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    # Video "seen1": object 1 throughout, object 2 enters at the 4th frame (frame number 15). The
    # prediction is perfect, except for a spurious object-2 blob before it enters, which must not count.
    gt_frames = [blob(5, 5, 1) + (blob(30, 40, 2) if t >= 3 else 0) for t in range(6)]
    pred_frames = [f.copy() for f in gt_frames]
    pred_frames[1][30:36, 40:46] = 2
    write_label_video(gt, "seen1", gt_frames)
    write_label_video(pred, "seen1", pred_frames)
    # Video "unseen1": one object the prediction misses entirely.
    write_label_video(gt, "unseen1", [blob(10, 10, 1)] * 4)
    write_label_video(pred, "unseen1", [np.zeros((48, 64), np.uint8)] * 4)
    meta = {
        "videos": {
            "seen1": {
                "objects": {
                    "1": {"frame_range": {"start": 0, "end": 30}},
                    "2": {"frame_range": {"start": 15, "end": 30}},
                }
            },
            "unseen1": {"objects": {"1": {"frame_range": {"start": "00000000", "end": "00000020"}}}},
        },
        "unseen_videos": ["unseen1"],
    }
    meta_path = tmp_path / "meta.json"
    meta_path.write_text(json.dumps(meta))
    results = lvos_evaluator.evaluate(gt, pred, meta_json=meta_path)
    by_key = {(o.video, o.object_id): o for o in results.objects}
    assert by_key[("seen1", "2")].frames[0] == "00000015.png" and len(by_key[("seen1", "2")].j) == 3
    assert [o.group for o in results.objects] == ["seen", "seen", "unseen"]
    s = results.summary
    assert (s.seen.j, s.seen.f, s.unseen.j, s.unseen.f) == (100.0, 100.0, 0.0, 0.0)
    assert (s.j, s.f, s.jf) == (50.0, 50.0, 50.0)
    assert s.all_objects.jf == pytest.approx(200 / 3)

    # Without the meta JSON, objects are found in the GT and scored from their first appearance;
    # the unseen list comes from a text file. Same numbers.
    unseen_txt = tmp_path / "unseen.txt"
    unseen_txt.write_text("unseen1\n")
    plain = lvos_evaluator.evaluate(gt, pred, unseen_list=unseen_txt)
    assert [(o.video, o.object_id, o.group, len(o.j)) for o in plain.objects] == [
        ("seen1", "1", "seen", 6),
        ("seen1", "2", "seen", 3),
        ("unseen1", "1", "unseen", 4),
    ]
    assert plain.summary.jf == 50.0
    # No split information: everything is seen and J&F is the plain object mean.
    assert lvos_evaluator.evaluate(gt, pred).summary.jf == pytest.approx(200 / 3)

    # Object-level flags and unseen categories override the video-level default.
    meta["unseen_videos"] = []
    meta["unseen_categories"] = ["okapi"]
    meta["videos"]["seen1"]["objects"]["2"]["category"] = "okapi"
    meta["videos"]["unseen1"]["objects"]["1"]["unseen"] = True
    meta_path.write_text(json.dumps(meta))
    groups = [o.group for o in lvos_evaluator.evaluate(gt, pred, meta_json=meta_path).objects]
    assert groups == ["seen", "unseen", "unseen"]

    # CLI: the headline line carries the split.
    proc = run_cli(
        "sav_dataset.lvos_evaluator",
        "--gt_root",
        str(gt),
        "--pred_root",
        str(pred),
        "--unseen_list",
        str(unseen_txt),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    assert "J&F 50.00" in proc.stdout and "J_s 100.00" in proc.stdout and "F_u 0.00" in proc.stdout
    assert (
        (pred / "lvos_results.csv").read_text().splitlines()[1].startswith("Global score,,seen+unseen,50.0")
    )


def test_davis2017_layout_skip_first_and_last(tmp_path):
    # DAVIS-2017 protocol: all objects from frame 0, first and last frame dropped, void label 255 ignored.
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt_frames = [blob(5, 5, 1) + blob(25, 30, 2) for _ in range(5)]
    for f in gt_frames:
        f[0:3, :] = 255
    pred_frames = [blob(5, 5, 1) + blob(25, 30, 2) for _ in range(5)]
    pred_frames[0][:] = 0
    pred_frames[4][:] = 0
    for f in pred_frames[1:4]:
        f[0:3, :] = 1  # predicted inside the void area only
    write_label_video(gt, "bike", gt_frames)
    write_label_video(pred, "bike", pred_frames)
    davis = lvos_evaluator.evaluate(gt, pred, skip_first_and_last=True)
    assert [len(o.j) for o in davis.objects] == [3, 3] and davis.summary.jf == 100.0
    assert lvos_evaluator.evaluate(gt, pred).summary.jf < 100.0
    assert lvos_evaluator.evaluate(gt, pred, skip_first_and_last=True, void_label=None).summary.j < 100.0


def test_video_to_jpeg_frames(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 24, (64, 48))
    assert writer.isOpened()
    for i in range(24):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()
    paths = extract_frames(video, tmp_path / "frames", fps=6)
    assert [p.name for p in paths] == [f"{k:05d}.jpg" for k in range(6)]
    brightness = [int(cv2.imread(str(p))[24, 32, 0]) for p in paths]
    assert all(abs(b - 40 * k) <= 6 for k, b in enumerate(brightness)), brightness
    assert len(extract_frames(video, tmp_path / "all")) == 24


def test_sav_davis_layout_object_counts_from_first_presence(tmp_path):
    # Official SA-V semantics: an object enters the average at the first evaluated frame where it is in
    # the GT *or* the prediction. Object 2 enters the GT at frame 3 but is (wrongly) predicted at
    # frame 2, so frames 2-4 count (first and last of 6 are skipped): J = F = (0 + 1 + 1) / 3.
    # (Scoring all of frames 1-4 would give 3/4, scoring from its GT entry 1.) Object 7 exists only in
    # the prediction and is not reported.
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt_frames = [blob(5, 5, 1) + (blob(30, 40, 2) if t >= 3 else 0) for t in range(6)]
    pred_frames = [f.copy() for f in gt_frames]
    pred_frames[2][30:36, 40:46] = 2
    pred_frames[1][40:44, 0:4] = 7
    write_label_video(gt, "vid", gt_frames)
    write_label_video(pred, "vid", pred_frames)
    results = sav_evaluator.evaluate(gt, pred)
    assert [o.object_id for o in results.objects] == ["1", "2"]
    late = results.objects[1]
    assert late.frames == [f"{5 * t:08d}.png" for t in range(2, 5)]
    assert late.j_mean == pytest.approx(200 / 3) and late.f_mean == pytest.approx(200 / 3)
    assert results.summary.jf == pytest.approx((100 + 200 / 3) / 2)
