"""Box-tracking benchmarks without a model: readers on folders made here in each dataset's layout
(frames from the bundled clip, boxes written here), result writers, the first-box checks, and the
evaluator against hand-computed cases and the ``got10k`` toolkit."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import BEDROOM_DIR
from extras import require

from sam2long.sot.datasets import SotInputError, SotSequence, load_sequence, sequence_names
from sam2long.sot.evaluate import (
    OVERLAP_THRESHOLDS,
    evaluate,
    sequence_curves,
    sequence_errors,
)
from sam2long.sot.results import read_result, write_result, write_zip
from sam2long.sot.run import EMPTY_BOX, mask_box, prompt_box

FRAMES = sorted(BEDROOM_DIR.glob("*.jpg"))
WIDTH, HEIGHT = 480, 270


def moving_boxes(count: int, start=(40.0, 60.0, 120.0, 100.0), step=(5.0, 2.0)) -> np.ndarray:
    x, y, w, h = start
    return np.array([[x + step[0] * i, y + step[1] * i, w, h] for i in range(count)])


def copy_frames(folder: Path, count: int, name=lambda i: f"{i + 1:08d}.jpg", first: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shutil.copy(FRAMES[i % len(FRAMES)], folder / name(first + i))


def box_lines(boxes: np.ndarray, sep: str = ",") -> str:
    return "".join(sep.join(f"{v:g}" for v in box) + "\n" for box in boxes)


# --------------------------------------------------------------------------- dataset layouts


def make_lasot(root: Path, sequences: dict[str, int], hidden: dict[str, list[int]] | None = None) -> Path:
    """``<class>/<seq>/img/%08d.jpg`` with ``groundtruth.txt`` and the visibility flags."""
    for name, count in sequences.items():
        folder = root / name.rsplit("-", 1)[0] / name
        copy_frames(folder / "img", count)
        (folder / "groundtruth.txt").write_text(box_lines(moving_boxes(count)))
        occluded = [int(i in (hidden or {}).get(name, [])) for i in range(count)]
        (folder / "full_occlusion.txt").write_text(",".join(map(str, occluded)))
        (folder / "out_of_view.txt").write_text(",".join("0" for _ in range(count)))
    return root


def make_got10k(root: Path, sequences: dict[str, int], test: bool = False) -> Path:
    """``list.txt`` and ``<seq>/%08d.jpg`` with the val labels (test: the first box only)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "list.txt").write_text("".join(f"{n}\n" for n in sequences))
    for name, count in sequences.items():
        folder = root / name
        copy_frames(folder, count)
        boxes = moving_boxes(count)
        (folder / "groundtruth.txt").write_text(box_lines(boxes[:1] if test else boxes))
        if test:
            continue
        cover = [8 if i % 3 else 0 for i in range(count)]
        (folder / "cover.label").write_text("".join(f"{c}\n" for c in cover))
        (folder / "absence.label").write_text("".join(f"{int(c == 0)}\n" for c in cover))
        (folder / "cut_by_image.label").write_text("".join("0\n" for _ in cover))
        (folder / "meta_info.ini").write_text(
            f"[METAINFO]\nurl: x\nbegin_time: 0\nend_time: 1\nanno_fps: 10Hz\nobject_class: cat\n"
            f"motion_class: walking\nmajor_class: animal\nroot_class: animal\nmotion_adverb: slowly\n"
            f"resolution: ({WIDTH}, {HEIGHT})\n"
        )
    return root


def test_lasot_reader(tmp_path: Path):
    root = make_lasot(tmp_path, {"cat-1": 4, "cat-3": 5, "dog-2": 3}, hidden={"cat-3": [2]})
    assert sequence_names("lasot", root) == ["cat-1", "cat-3", "dog-2"]
    (root / "testing_set.txt").write_text("dog-2\ncat-3\n")
    assert sequence_names("lasot", root) == ["dog-2", "cat-3"]
    seq = load_sequence("lasot", root, "cat-3")
    assert [p.name for p in seq.frames] == [f"{i:08d}.jpg" for i in range(1, 6)]
    np.testing.assert_array_equal(seq.boxes, moving_boxes(5))
    assert seq.visible.tolist() == [True, True, False, True, True]


def test_got10k_reader(tmp_path: Path):
    val = make_got10k(tmp_path / "val", {"GOT-10k_Val_000002": 5, "GOT-10k_Val_000001": 4})
    assert sequence_names("got10k_val", val) == ["GOT-10k_Val_000002", "GOT-10k_Val_000001"]
    seq = load_sequence("got10k_val", val, "GOT-10k_Val_000001")
    assert len(seq.frames) == 4 and seq.boxes.shape == (4, 4)
    assert seq.cover.tolist() == [0, 8, 8, 0] and seq.visible.tolist() == [False, True, True, False]
    assert seq.resolution == (WIDTH, HEIGHT)
    test = make_got10k(tmp_path / "test", {"GOT-10k_Test_000001": 4}, test=True)
    seq = load_sequence("got10k_test", test, "GOT-10k_Test_000001")
    assert len(seq.frames) == 4 and seq.boxes.shape == (1, 4) and seq.cover is None


def test_trackingnet_otb_uav_nfs_readers(tmp_path: Path):
    tn = tmp_path / "TrackingNet" / "TEST"
    copy_frames(tn / "frames" / "abc_1", 11, name=lambda i: f"{i}.jpg")  # 0.jpg .. 10.jpg: numeric order
    (tn / "anno").mkdir()
    (tn / "anno" / "abc_1.txt").write_text(box_lines(moving_boxes(1)))
    seq = load_sequence("trackingnet", tn, "abc_1")
    assert sequence_names("trackingnet", tn) == ["abc_1"]
    assert [p.stem for p in seq.frames] == [str(i) for i in range(11)] and seq.boxes.shape == (1, 4)

    otb = tmp_path / "OTB100"
    copy_frames(otb / "Basketball" / "img", 3, name=lambda i: f"{i + 1:04d}.jpg")
    (otb / "Basketball" / "groundtruth_rect.txt").write_text(box_lines(moving_boxes(3), "\t"))
    copy_frames(otb / "Jogging" / "img", 3, name=lambda i: f"{i + 1:04d}.jpg")
    for k in (1, 2):
        (otb / "Jogging" / f"groundtruth_rect.{k}.txt").write_text(box_lines(moving_boxes(3, step=(k, k))))
    copy_frames(otb / "BlurCar3" / "img", 5, name=lambda i: f"{i + 1:04d}.jpg")  # annotated from frame 3
    (otb / "BlurCar3" / "groundtruth_rect.txt").write_text(box_lines(moving_boxes(3)))
    copy_frames(otb / "Human4" / "img", 3, name=lambda i: f"{i + 1:04d}.jpg")
    (otb / "Human4" / "groundtruth_rect.1.txt").write_text("\n")  # empty in the official download
    (otb / "Human4" / "groundtruth_rect.2.txt").write_text(box_lines(moving_boxes(3, step=(3, 3))))
    assert sequence_names("otb100", otb) == ["Basketball", "BlurCar3", "Human4", "Jogging-1", "Jogging-2"]
    np.testing.assert_array_equal(load_sequence("otb100", otb, "Human4").boxes, moving_boxes(3, step=(3, 3)))
    np.testing.assert_array_equal(
        load_sequence("otb100", otb, "Jogging-2").boxes, moving_boxes(3, step=(2, 2))
    )
    assert [p.name for p in load_sequence("otb100", otb, "BlurCar3").frames] == [
        "0003.jpg",
        "0004.jpg",
        "0005.jpg",
    ]

    uav = tmp_path / "UAV123"
    copy_frames(uav / "data_seq" / "UAV123" / "bike1", 3, name=lambda i: f"{i + 1:06d}.jpg")
    copy_frames(uav / "data_seq" / "UAV123" / "car1", 4, name=lambda i: f"{i + 1:06d}.jpg")
    (uav / "anno" / "UAV123").mkdir(parents=True)
    gt = moving_boxes(3)
    gt[1] = np.nan  # UAV123 marks absent frames with NaN
    (uav / "anno" / "UAV123" / "bike1.txt").write_text(box_lines(gt).replace("nan", "NaN"))
    (uav / "anno" / "UAV123" / "car1_1.txt").write_text(box_lines(moving_boxes(2)))
    assert sequence_names("uav123", uav) == ["bike1", "car1_1"]
    assert np.isnan(load_sequence("uav123", uav, "bike1").boxes[1]).all()
    assert [p.parent.name for p in load_sequence("uav123", uav, "car1_1").frames] == ["car1", "car1"]

    nfs = tmp_path / "NfS"
    copy_frames(nfs / "bee" / "30" / "bee", 3, name=lambda i: f"{i + 1:05d}.jpg")
    xyxy = [(10 + i, 20, 50 + i, 80) for i in range(24)]  # 240 fps annotations: every 8th is a 30 fps frame
    (nfs / "bee" / "30" / "bee.txt").write_text(
        "".join(f'1 {a} {b} {c} {d} {i + 1} 0 0 0 "bee"\n' for i, (a, b, c, d) in enumerate(xyxy))
    )
    seq = load_sequence("nfs", nfs, "bee")
    np.testing.assert_array_equal(seq.boxes, [[10, 20, 40, 60], [18, 20, 40, 60], [26, 20, 40, 60]])
    (nfs / "bee" / "30" / "bee.txt").write_text(
        "".join(f'1 {i} 2 {i + 5} 9 {i + 1} 0 0 0 "bee"\n' for i in range(4))
    )
    seq = load_sequence("nfs", nfs, "bee")  # one box too many at the end: trimmed
    np.testing.assert_array_equal(seq.boxes, [[0, 2, 5, 7], [1, 2, 5, 7], [2, 2, 5, 7]])


def test_reader_errors_name_the_sequence_and_file(tmp_path: Path):
    root = make_lasot(tmp_path, {"cat-1": 4, "cat-2": 4})
    (root / "cat" / "cat-2" / "img" / "00000003.jpg").unlink()
    with pytest.raises(SotInputError, match=r"'cat-2': frame 2 .*00000003\.jpg"):
        load_sequence("lasot", root, "cat-2")
    with pytest.raises(SotInputError, match=r"'cow-9'.*groundtruth\.txt"):
        load_sequence("lasot", root, "cow-9")
    (root / "cat" / "cat-1" / "groundtruth.txt").write_text("1,2,3\n")
    with pytest.raises(SotInputError, match=r"'cat-1'.*line 1"):
        load_sequence("lasot", root, "cat-1")


# --------------------------------------------------------------------------- writers and boxes


@pytest.mark.parametrize("layout", ["txt", "got10k"])
def test_writers_round_trip_and_zip(tmp_path: Path, layout: str):
    boxes = np.array([[40, 60, 120, 100], [0, 0, 0, 0], [3.5, 4.25, 10, 12]])
    files = write_result(tmp_path / "out", layout, "seq_a", boxes, [0.5, 0.25, 0.125])
    np.testing.assert_array_equal(read_result(tmp_path / "out", layout, "seq_a"), boxes)
    times = np.loadtxt(tmp_path / "out" / files[1])
    np.testing.assert_allclose(times, [0.5, 0.25, 0.125])
    expected = (
        ["seq_a/seq_a_001.txt", "seq_a/seq_a_time.txt"]
        if layout == "got10k"
        else ["seq_a.txt", "seq_a_time.txt"]
    )
    assert files == expected
    zipped = write_zip(tmp_path / "out", layout, ["seq_a"], tmp_path / "submit.zip")
    with zipfile.ZipFile(zipped) as archive:
        assert archive.namelist() == (expected if layout == "got10k" else ["seq_a.txt"])
    with pytest.raises(SotInputError, match="missing"):
        write_zip(tmp_path / "out", layout, ["seq_a", "seq_b"], tmp_path / "partial.zip")
    assert not (tmp_path / "partial.zip").exists()


@pytest.mark.parametrize("layout", ["txt", "got10k"])
def test_leftovers_of_a_killed_write_are_removed_per_sequence(tmp_path: Path, layout: str):
    from sam2long.mask_io import temp_path
    from sam2long.sot.results import result_files
    from sam2long.sot.run import remove_leftovers

    made = {}
    for name in ("cat-1", "cat-10"):
        made[name] = [temp_path(tmp_path / f) for f in result_files(layout, name)]
        for path in made[name]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("half")
    remove_leftovers(tmp_path, layout, "cat-1")
    assert not any(p.exists() for p in made["cat-1"])
    assert all(p.exists() for p in made["cat-10"])  # another shard may be writing it


def test_mask_box_and_prompt_box():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    assert mask_box(mask).tolist() == EMPTY_BOX.tolist()
    mask[10:20, 30:35] = True
    mask[25, 100] = True
    assert mask_box(mask).tolist() == [30, 10, 71, 16]

    def seq(box) -> SotSequence:
        return SotSequence("s", (Path("f0.jpg"),), np.array([box], dtype=np.float64))

    assert prompt_box(seq([-10, 5, 30, 20]), (HEIGHT, WIDTH)).tolist() == [0, 5, 20, 25]
    with pytest.raises(SotInputError, match=r"'s', frame 0 .*outside the 480x270 image"):
        prompt_box(seq([500, 5, 30, 20]), (HEIGHT, WIDTH))
    with pytest.raises(SotInputError, match="no area"):
        prompt_box(seq([5, 5, 0, 20]), (HEIGHT, WIDTH))


# --------------------------------------------------------------------------- OPE, hand-computed


def curves_of(pred, gt, dataset="otb100", visible=None):
    return sequence_curves(
        *sequence_errors(np.asarray(pred, float), np.asarray(gt, float), dataset, visible, "s")
    )


GT = moving_boxes(5, start=(40.0, 60.0, 100.0, 50.0))


def test_ope_perfect_and_shifted():
    perfect = curves_of(GT, GT).scores
    # IoU 1 beats every threshold but 1.0 itself (success is IoU > threshold)
    assert perfect == pytest.approx({"auc": 100 * 20 / 21, "precision": 100.0, "norm_precision": 100.0})
    small = GT + [5, 0, 0, 0]  # IoU 95*50 / (2*5000 - 95*50) = 0.905, centre 5 px = 0.05 widths
    iou = 95 * 50 / (2 * 5000 - 95 * 50)
    above = int((iou > OVERLAP_THRESHOLDS).sum())
    scores = curves_of(small, GT).scores  # frame 0 is set to the ground truth
    assert scores == pytest.approx(
        {"auc": 100 * (20 + 4 * above) / (21 * 5), "precision": 100.0, "norm_precision": 100.0}
    )
    far = GT + [30, 0, 0, 0]  # 30 px > 20 px; 0.3 widths > 0.2
    assert curves_of(far, GT).scores["precision"] == pytest.approx(100 / 5)
    assert curves_of(far, GT).scores["norm_precision"] == pytest.approx(100 / 5)


def test_ope_lost_target_keeps_the_previous_box():
    pred = GT.copy()
    pred[3:] = 0  # empty masks from frame 3 on: pytracking carries frame 2's box forward
    carried = curves_of(pred, GT)
    same = GT.copy()
    same[3:] = GT[2]
    np.testing.assert_allclose(carried.success, curves_of(same, GT).success)
    # frame 2's box vs frames 3, 4: shifted by 5/10 px in x and 2/4 in y
    errors = [np.hypot(5 * k, 2 * k) for k in (1, 2)]
    assert carried.precision[20] == pytest.approx(100.0)
    assert carried.precision[5] == pytest.approx(100 * (3 + sum(e <= 5 for e in errors)) / 5)


def test_ope_invisible_frames_fail_on_lasot_and_count_elsewhere():
    visible = np.array([True, True, False, True, True])
    lasot = curves_of(GT, GT, "lasot", visible).scores
    assert lasot == pytest.approx({"auc": 100 * 20 / 21 * 4 / 5, "precision": 80.0, "norm_precision": 80.0})
    # without visibility flags every frame is valid
    assert curves_of(GT, GT, "got10k_val").scores["precision"] == pytest.approx(100.0)
    # an unannotated ground-truth box: never a success, but pytracking's normalised error -1 counts
    gt = GT.copy()
    gt[2, 2] = 0
    scores = curves_of(GT, gt).scores
    assert scores["auc"] == pytest.approx(100 * 20 / 21 * 4 / 5)
    assert scores["precision"] == pytest.approx(80.0) and scores["norm_precision"] == pytest.approx(100.0)


def test_ope_rejects_invalid_results_and_short_lasot():
    with pytest.raises(SotInputError, match="NaN or a negative"):
        curves_of(GT * [1, 1, -1, 1], GT)
    with pytest.raises(SotInputError, match="4 result boxes for 5 frames"):
        curves_of(GT[:4], GT, "lasot", np.ones(5, bool))
    unannotated = GT.copy()
    unannotated[2] = np.nan
    with pytest.raises(SotInputError, match="NaN in the ground truth"):
        curves_of(GT + [30, 0, 0, 0], unannotated)
    # UAV123 marks absence with NaN: that frame never succeeds in IoU but counts in precision
    uav = curves_of(GT + [30, 0, 0, 0], unannotated, "uav123").scores
    above = int((70 * 50 / (2 * 5000 - 70 * 50) > OVERLAP_THRESHOLDS).sum())  # 30 px off: IoU 0.54
    assert uav["precision"] == pytest.approx(40.0)  # frame 0 and the NaN frame
    assert uav["auc"] == pytest.approx(100 * (20 + 3 * above) / (21 * 5))
    # elsewhere padded with zero boxes after the previous-box rule ran, so the missing frame fails
    padded = curves_of(GT[:4], GT)
    assert padded.scores["precision"] == pytest.approx(80.0)


def test_evaluate_json_csv_plots_and_missing_results(tmp_path: Path):
    require("matplotlib", "pip install -e '.[dev]'")
    from sam2long.sot.cli import eval_main

    root = make_lasot(tmp_path / "lasot", {"cat-1": 4, "cat-3": 5})
    good, bad = tmp_path / "good", tmp_path / "bad"
    for name, count in (("cat-1", 4), ("cat-3", 5)):
        write_result(good, "txt", name, moving_boxes(count), [0.1] * count)
    write_result(bad, "txt", "cat-1", moving_boxes(4) + [30, 0, 0, 0], [0.1] * 4)
    out = tmp_path / "eval" / "lasot.json"
    status = eval_main(
        [
            "--dataset",
            "lasot",
            "--gt_root",
            str(root),
            "--pred_root",
            str(good),
            str(bad),
            "--output_json",
            str(out),
        ]
    )
    assert status == 1  # cat-3 has no result in "bad"
    payload = json.loads(out.read_text())
    assert payload["auc"] == pytest.approx(100 * 20 / 21) and payload["precision"] == pytest.approx(100.0)
    assert set(payload["per_sequence"]) == {"cat-1", "cat-3"}
    assert payload["trackers"][1]["name"] == "bad" and "cat-3" in payload["trackers"][1]["errors"]
    assert payload["trackers"][1]["precision"] == pytest.approx(100 / 4)
    rows = (out.parent / "lasot.csv").read_text().splitlines()
    assert rows[0].startswith("tracker,sequence,frames,auc") and len(rows) == 4
    for plot in ("success", "precision", "norm_precision"):
        assert (out.parent / f"lasot_{plot}.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- GOT-10k against the toolkit


def test_got10k_val_equals_the_got10k_toolkit(tmp_path: Path):
    require("got10k", "pip install -e '.[dev]'")
    from got10k.experiments import ExperimentGOT10k

    names = {f"GOT-10k_Val_{i:06d}": n for i, n in ((1, 7), (2, 5), (3, 6))}
    make_got10k(tmp_path / "GOT-10k" / "val", names)
    rng = np.random.default_rng(0)
    results = tmp_path / "results" / "GOT-10k" / "mine"  # where the toolkit looks
    for name, count in names.items():
        gt = moving_boxes(count)
        pred = gt + rng.normal(0, 15, gt.shape)
        pred[:, 2:] = np.abs(pred[:, 2:])
        pred[1] = [-40, gt[1, 1], 150, 100]  # past the left edge: the toolkit moves it to x = 0
        pred[2] = [0, 0, 0, 0]  # an empty mask
        pred[3] = [WIDTH - 30, HEIGHT - 20, 90, 70]  # partly outside the image, away from the target
        pred[4] = [gt[4, 0], gt[4, 1], 500, 100]  # past the right edge: cut at the image border
        write_result(results, "got10k", name, pred, [0.05] * count)
    experiment = ExperimentGOT10k(
        str(tmp_path / "GOT-10k"),
        subset="val",
        result_dir=str(tmp_path / "results"),
        report_dir=str(tmp_path / "r"),
    )
    toolkit = experiment.report(["mine"])["mine"]["overall"]
    payload, _ = evaluate("got10k_val", tmp_path / "GOT-10k" / "val", [results])
    assert payload["ao"] == pytest.approx(100 * toolkit["ao"], abs=1e-9)
    assert payload["sr50"] == pytest.approx(100 * toolkit["sr"], abs=1e-9)
    assert payload["sr75"] == pytest.approx(100 * toolkit["succ_curve"][75], abs=1e-9)
    assert 0 < payload["ao"] < 100


# --------------------------------------------------------------------------- the paper's table


def test_report_prints_table5_beside_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture):
    from sam2long.cli import main as sam2long_main

    lasot = make_lasot(tmp_path / "LaSOT", {"cat-1": 4, "cat-3": 5})
    got = make_got10k(tmp_path / "GOT-10k" / "val", {"GOT-10k_Val_000001": 4})
    run = tmp_path / "runs" / "mine"
    for name, count in (("cat-1", 4), ("cat-3", 5)):
        write_result(run / "lasot", "txt", name, moving_boxes(count), [0.1] * count)
    write_result(run / "got10k_val", "got10k", "GOT-10k_Val_000001", moving_boxes(4), [0.1] * 4)
    out = tmp_path / "table.json"
    gt = ["--gt_root", f"lasot={lasot}", f"got10k_val={got}"]
    assert (
        sam2long_main(["eval", "sot", "--report", *gt, "--pred_root", str(run), "--output_json", str(out)])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "LaSOT AUC" in lines[0] and "LaSOT-ext AUC" in lines[0] and "GOT-10k AO (val)" in lines[0]
    assert lines[1].split()[-3:] == ["70.0", "56.9", "80.7"] and lines[2].split()[-3:] == [
        "73.9",
        "60.9",
        "81.1",
    ]
    measured = json.loads(out.read_text())["measured"][str(run)]
    # perfect boxes: AUC 20/21 (IoU 1 is not above the threshold 1.0); GOT-10k AO 100; no LaSOT-ext run
    assert measured == pytest.approx({"lasot": 100 * 20 / 21, "got10k_val": 100.0})
    assert lines[3].split()[-3:] == [f"{100 * 20 / 21:.1f}", "-", "100.0"]
