"""``sam2long sot`` end to end with a tiny random-weight SAM 2.1 model at 256 px on folders made
in the benchmarks' layouts (tests/test_sot.py): official result files, shards equal to one run,
resume after a kill, per-sequence errors while the others go on, the empty-mask rule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_sot import make_got10k, make_lasot, moving_boxes

from sam2long.cli import main as sam2long_main
from sam2long.sot.results import read_result

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SEQUENCES = {"cat-1": 4, "cat-3": 3, "dog-2": 4}


@pytest.fixture(scope="module")
def present(make_checkpoint: Callable[..., Path]) -> Path:
    """Random weights whose object score says "present": the masks are non-trivial."""
    return make_checkpoint(CONFIG, obj_score_bias=20.0)


@pytest.fixture(scope="module")
def lasot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lasot(tmp_path_factory.mktemp("LaSOT"), SEQUENCES)


def flags(checkpoint: Path, dataset: str, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sot",
        "--config",
        CONFIG,
        "--checkpoint",
        str(checkpoint),
        "--hydra_overrides",
        "++model.image_size=256",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--dataset",
        dataset,
        "--root",
        str(root),
        "--out",
        str(out),
        *extra,
    ]


def run(args: list[str]) -> int:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            patch.delenv(name, raising=False)
        return sam2long_main(args)


def boxes_of(out: Path, names=SEQUENCES) -> dict[str, np.ndarray]:
    return {name: read_result(out, "txt", name) for name in names}


@pytest.fixture(scope="module")
def reference(present: Path, lasot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted, unsharded SAM 2 run over the LaSOT folder."""
    out = tmp_path_factory.mktemp("reference") / "lasot"
    assert run(flags(present, "lasot", lasot, out, "--tracker", "sam2")) == 0
    return out


def test_lasot_run_writes_the_official_files_and_summary(reference: Path, lasot: Path):
    for name, count in SEQUENCES.items():
        boxes = read_result(reference, "txt", name)
        assert boxes.shape == (count, 4)
        np.testing.assert_array_equal(boxes[0], moving_boxes(count)[0])  # frame 0 reports the given box
        assert (boxes[1:, 2:] > 0).all() and (boxes[:, :2] >= 0).all()
        assert (boxes[1:, 0] + boxes[1:, 2] <= 480).all() and (boxes[1:, 1] + boxes[1:, 3] <= 270).all()
        times = np.loadtxt(reference / f"{name}_time.txt")
        assert times.shape == (count,) and (times > 0).all()
    summary = json.loads((reference.parent / "lasot.state" / "summary.json").read_text())
    assert summary["settings"]["dataset"] == "lasot" and summary["totals"]["done"] == len(SEQUENCES)
    for entry in summary["videos"].values():
        assert entry["status"] == "done" and entry["fps"] > 0 and entry["peak_mem_bytes"] > 0


def test_shards_equal_one_run(reference: Path, present: Path, lasot: Path, tmp_path: Path):
    out = tmp_path / "sharded"
    for shard in ("0", "1"):
        assert (
            run(
                flags(
                    present,
                    "lasot",
                    lasot,
                    out,
                    "--tracker",
                    "sam2",
                    "--num_shards",
                    "2",
                    "--shard_id",
                    shard,
                )
            )
            == 0
        )
    sharded = boxes_of(out)
    for name, boxes in boxes_of(reference).items():
        np.testing.assert_array_equal(sharded[name], boxes)
    summaries = sorted(p.name for p in (tmp_path / "sharded.state").glob("summary*.json"))
    assert summaries == ["summary_shard0of2.json", "summary_shard1of2.json"]


def test_resume_after_a_kill_gives_the_same_results(
    reference: Path, present: Path, lasot: Path, tmp_path: Path
):
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "sam2long", *flags(present, "lasot", lasot, out, "--tracker", "sam2")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = tmp_path / "killed.state" / "done"
    deadline = time.monotonic() + 300
    while not any(done.glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed, "the run ended before its first sequence was marked done"
    assert 1 <= len(list(done.glob("*.json"))) < len(SEQUENCES)
    assert run(flags(present, "lasot", lasot, out, "--tracker", "sam2")) == 0
    resumed = boxes_of(out)
    for name, boxes in boxes_of(reference).items():
        np.testing.assert_array_equal(resumed[name], boxes)
    summary = json.loads((tmp_path / "killed.state" / "summary.json").read_text())
    assert summary["totals"]["skipped"] >= 1 and summary["totals"]["failed"] == 0
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp file left


def test_bad_sequences_fail_alone(present: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = make_lasot(tmp_path / "LaSOT", {"cat-1": 3, "cat-2": 3, "dog-1": 3})
    (root / "cat" / "cat-2" / "img" / "00000002.jpg").unlink()
    (root / "dog" / "dog-1" / "groundtruth.txt").write_text("600,10,50,50\n700,10,50,50\n700,10,50,50\n")
    listed = tmp_path / "list.txt"
    listed.write_text("cat-1\ncow-7\ncat-2\ndog-1\n")
    out = tmp_path / "out"
    assert run(flags(present, "lasot", root, out, "--tracker", "sam2", "--seq_list", str(listed))) == 1
    summary = json.loads((tmp_path / "out.state" / "summary.json").read_text())["videos"]
    assert summary["cat-1"]["status"] == "done" and (out / "cat-1.txt").is_file()
    assert "'cow-7'" in summary["cow-7"]["error"] and "groundtruth.txt" in summary["cow-7"]["error"]
    assert "frame 1" in summary["cat-2"]["error"] and "00000002.jpg" in summary["cat-2"]["error"]
    assert "outside the 480x270 image" in summary["dog-1"]["error"]
    assert not (out / "cat-2.txt").exists() and not (out / "dog-1.txt").exists()


def test_sam2long_on_got10k_layout_and_the_empty_mask_rule(
    make_checkpoint: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    absent = make_checkpoint(CONFIG, obj_score_bias=-20.0)  # every tracked mask is empty
    root = make_got10k(tmp_path / "val", {"GOT-10k_Val_000001": 4})
    out = tmp_path / "sam2long"
    submit = tmp_path / "submit.zip"
    assert run(flags(absent, "got10k_val", root, out, "--num_pathway", "2", "--zip", str(submit))) == 0
    with zipfile.ZipFile(submit) as archive:  # the server's layout
        assert sorted(archive.namelist()) == [
            "GOT-10k_Val_000001/GOT-10k_Val_000001_001.txt",
            "GOT-10k_Val_000001/GOT-10k_Val_000001_time.txt",
        ]
    boxes = np.loadtxt(out / "GOT-10k_Val_000001" / "GOT-10k_Val_000001_001.txt", delimiter=",")
    np.testing.assert_array_equal(boxes[0], moving_boxes(4)[0])
    np.testing.assert_array_equal(boxes[1:], 0)  # empty masks report 0,0,0,0
    assert np.loadtxt(out / "GOT-10k_Val_000001" / "GOT-10k_Val_000001_time.txt").shape == (4,)
    summary = json.loads((tmp_path / "sam2long.state" / "summary.json").read_text())
    assert summary["settings"]["tracker"] == "sam2long" and summary["settings"]["num_pathways"] == 2
    assert summary["settings"]["apply_postprocessing"] is False, "as SAM 2's and SAM2Long's evaluations"
    assert summary["videos"]["GOT-10k_Val_000001"]["empty_frames"] == 3
    assert (
        sam2long_main(
            ["eval", "sot", "--dataset", "got10k_val", "--gt_root", str(root), "--pred_root", str(out)]
        )
        == 0
    )
    assert "ao 0.00" in capsys.readouterr().out  # the frames that count (cover > 0) all have IoU 0


def test_tree_flags_are_refused_with_sam2(present: Path, lasot: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(flags(present, "lasot", lasot, tmp_path / "x", "--tracker", "sam2", "--num_pathway", "3"))
    assert exit_info.value.code == 2
    assert "--tracker sam2 takes no SAM2Long tree flags" in capsys.readouterr().err


@pytest.mark.parametrize("tracker", ["samurai", "dam4sam"])
def test_samurai_and_dam4sam_run_the_benchmark(tracker: str, present: Path, lasot: Path, tmp_path: Path):
    """The training-free box trackers by name, with their presets (DAM4SAM turns the box into a mask)."""
    out = tmp_path / tracker
    assert run(flags(present, "lasot", lasot, out, "--tracker", tracker, "--seq_list", str(_one(tmp_path)))) == 0
    boxes = read_result(out, "txt", "cat-1")
    assert boxes.shape == (SEQUENCES["cat-1"], 4) and (boxes[1:, 2:] > 0).all()
    summary = json.loads((out.parent / f"{tracker}.state" / "summary.json").read_text())
    assert summary["settings"]["tracker"] == tracker and summary["settings"]["preset"] == tracker
    assert summary["settings"]["apply_postprocessing"] is True, "as their official scripts"


def _one(tmp_path: Path) -> Path:
    listed = tmp_path / "list.txt"
    listed.write_text("cat-1\n")
    return listed
