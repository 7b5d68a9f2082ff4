"""``sam2long segment`` end to end on real frames with random weights, and its errors for bad input."""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam2long.cli import main
from sam2long.mask_io import read_mask

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
NUM_FRAMES, FPS = 6, 12


@pytest.fixture(scope="module")
def clip(bedroom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-frame 480x270 H.264 clip at 12 fps made from the bedroom test frames."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 480, 270, "yuv420p"
        for src in sorted(bedroom_dir.glob("*.jpg"))[:NUM_FRAMES]:
            frame = av.VideoFrame.from_image(Image.open(src).convert("RGB"))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def model_args(make_checkpoint) -> list[str]:
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=1.0)
    return [
        "--config",
        CFG,
        "--checkpoint",
        str(ckpt),
        "--hydra_overrides",
        "++model.image_size=256",
        "--device",
        "cpu",
    ]


def _prompts(tmp_path: Path, entries) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"prompts": entries}))
    return path


PROMPTS = [
    {"obj": 1, "frame": 0, "points": [[198, 112]], "labels": [1]},
    {"obj": 2, "frame": 0, "box": [75, 65, 140, 200]},
]


def test_segment_writes_every_output(clip: Path, model_args: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["segment", str(clip), "--prompts", str(_prompts(tmp_path, PROMPTS)), "--out", str(out)]
    assert main([*argv, *model_args, "--num_pathways", "2", "--compare-sam2"]) == 0
    last_line = capsys.readouterr().out.splitlines()[-1]
    assert last_line.startswith(f"wrote {NUM_FRAMES} frames to {out} (") and "compare.mp4" in last_line

    names = [f"{i:05d}" for i in range(NUM_FRAMES)]
    for obj in ("001", "002"):
        assert sorted(p.stem for p in (out / "masks" / obj).glob("*.png")) == names
        assert sorted(p.stem for p in (out / "sam2" / "masks" / obj).glob("*.png")) == names
    assert sorted(p.stem for p in (out / "palette").glob("*.png")) == names

    for video, width in (("overlay.mp4", 480), ("compare.mp4", None)):
        with av.open(str(out / video)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
            assert len(frames) == NUM_FRAMES and float(stream.average_rate) == FPS
            assert frames[0].shape[0] == 270
            if width is not None:
                assert frames[0].shape[1] == width
            else:
                assert frames[0].shape[1] > 2 * 480

    rle = json.loads((out / "masks_rle.json").read_text())
    assert (rle["height"], rle["width"]) == (270, 480) and len(rle["frames"]) == NUM_FRAMES
    for frame in rle["frames"]:
        for obj in frame["objects"]:
            decoded = mask_utils.decode({"size": obj["rle"]["size"], "counts": obj["rle"]["counts"].encode()})
            png = read_mask(out / "masks" / f"{obj['obj_id']:03d}" / f"{frame['frame_name']}.png") > 0
            assert np.array_equal(decoded.astype(bool), png), (frame["frame_idx"], obj["obj_id"])
    palette = read_mask(out / "palette" / "00003.png")
    one = read_mask(out / "masks" / "001" / "00003.png") > 0
    assert np.array_equal(palette == 1, one)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == NUM_FRAMES and summary["fps"] == FPS and summary["device"] == "cpu"
    assert summary["tracker"]["tracker"] == "sam2long" and summary["tracker"]["num_pathways"] == 2
    assert set(summary["trackers"]) == {"sam2", "sam2long"}
    assert summary["trackers"]["sam2long"]["frames_tracked"] == NUM_FRAMES
    assert summary["frame_range"] == [0, NUM_FRAMES - 1] and summary["video_frames"] == NUM_FRAMES
    assert not list(out.rglob(".partial-*")), "no temporary file is left"


def test_command_line_prompts_and_frame_folders(
    bedroom_dir: Path, model_args: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["segment", str(bedroom_dir), "--out", str(out), "--fps", "5", "--tracker", "sam2"]
    argv += ["--frame", "2", "--obj", "4", "--point", "198,112", "--point", "300,60,0", "--both"]
    assert main([*argv, *model_args]) == 0
    assert sorted(p.stem for p in (out / "masks" / "004").glob("*.png")) == [f"{i:05d}" for i in range(8)]
    with av.open(str(out / "overlay.mp4")) as container:
        assert float(container.streams.video[0].average_rate) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["direction"] == "both" and summary["trackers"]["sam2"]["frames_tracked"] == 8


@pytest.mark.parametrize(
    "entries, message",
    [
        (
            [{"obj": 1, "frame": 0, "points": [[5000, 5000]]}],
            r"prompts\[0\] \(object 1, frame 0\): points .* outside",
        ),
        (
            [{"obj": 1, "frame": 99, "box": [1, 1, 9, 9]}],
            r"prompts\[0\] \(object 1, frame 99\): frame_idx 99",
        ),
    ],
)
def test_bad_prompts_are_named(clip, model_args, tmp_path, capsys, entries, message) -> None:
    argv = ["segment", str(clip), "--prompts", str(_prompts(tmp_path, entries)), "--out", str(tmp_path / "o")]
    assert main([*argv, *model_args, "--tracker", "sam2"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_bad_video_model_and_output_are_named(clip, model_args, tmp_path, capsys) -> None:
    prompts = str(_prompts(tmp_path, PROMPTS))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert (
        main(["segment", str(broken), "--prompts", prompts, "--out", str(tmp_path / "o"), *model_args]) == 2
    )
    assert "broken.mp4" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown model 'sam9-huge'.*sam2.1-tiny"):
        main(
            ["segment", str(clip), "--prompts", prompts, "--out", str(tmp_path / "o"), "--model", "sam9-huge"]
        )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match="output folder .*file/out cannot be written"):
        main(["segment", str(clip), "--prompts", prompts, "--out", str(blocker / "out"), *model_args])


def test_a_run_failing_before_its_first_frame_leaves_nothing_behind(
    clip: Path, model_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening: the download fails
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("SAM2LONG_BASE_URL", f"http://127.0.0.1:{probe.getsockname()[1]}/sam2")
    for var in ("SAM2LONG_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAM2LONG_CACHE", str(cache))
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(SystemExit, match="cannot download model 'sam2.1-tiny'.*--checkpoint FILE"):
        main(["segment", str(clip), "--point", "10,10", "--out", str(out), "--model", "sam2.1-tiny"])
    assert not (tmp_path / "a").exists()
    assert not list(cache.rglob("*.lock")) and not list(cache.rglob("*.part"))

    entries = [{"obj": 1, "frame": 99, "box": [1, 1, 9, 9]}]
    bad = ["segment", str(clip), "--prompts", str(_prompts(tmp_path, entries)), *model_args]
    assert main([*bad, "--out", str(out)]) == 2  # fails in the tracker, after the folder was made
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main([*bad, "--out", str(existing)]) == 2
    assert existing.is_dir()  # a folder that was there before the run is left alone


def test_model_with_config_is_refused(clip: Path, model_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    argv = [
        "segment",
        str(clip),
        "--point",
        "10,10",
        "--out",
        str(out),
        "--model",
        "sam2.1-large",
        *model_args,
    ]
    with pytest.raises(SystemExit, match="--model sam2.1-large and --config .* both choose the model"):
        main(argv)
    assert not (tmp_path / "new").exists()  # the folders the run created are gone


def _decoded_frames(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def test_readme_quick_look_tracks_only_the_first_frames(
    model_args: list[str], tmp_path: Path, capsys
) -> None:
    """The README's quick look, ``--max_frames 15`` on the bundled 90-frame clip (random weights here)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    out = tmp_path / "out"
    argv = ["segment", str(examples / "bedroom.mp4"), "--prompts", str(examples / "bedroom_prompts.json")]
    assert main([*argv, "--out", str(out), "--max_frames", "15", *model_args]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote 15 frames (0-14 of 90) to {out} (")

    names = [f"{i:05d}" for i in range(15)]
    for obj in ("001", "002"):
        assert sorted(p.stem for p in (out / "masks" / obj).glob("*.png")) == names
    assert sorted(p.stem for p in (out / "palette").glob("*.png")) == names
    assert _decoded_frames(out / "overlay.mp4") == 15
    rle = json.loads((out / "masks_rle.json").read_text())
    assert [f["frame_idx"] for f in rle["frames"]] == list(range(15))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames"], summary["frame_range"], summary["video_frames"]) == (15, [0, 14], 90)
    assert summary["max_frames"] == 15 and summary["trackers"]["sam2long"]["frames_tracked"] == 15


def test_max_frames_bounds_every_writer_with_a_comparison(clip: Path, model_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prompts = [
        {"obj": 1, "frame": 1, "points": [[198, 112]]},
        {"obj": 2, "frame": 1, "box": [75, 65, 140, 200]},
    ]
    argv = ["segment", str(clip), "--prompts", str(_prompts(tmp_path, prompts)), "--out", str(out)]
    assert main([*argv, *model_args, "--max_frames", "3", "--num_pathways", "2", "--compare-sam2"]) == 0

    names = ["00001", "00002", "00003"]
    for masks in (out / "masks", out / "sam2" / "masks"):
        for obj in ("001", "002"):
            assert sorted(p.stem for p in (masks / obj).glob("*.png")) == names
    assert sorted(p.stem for p in (out / "palette").glob("*.png")) == names
    assert _decoded_frames(out / "overlay.mp4") == _decoded_frames(out / "compare.mp4") == 3
    rle = json.loads((out / "masks_rle.json").read_text())
    assert [(f["frame_idx"], f["frame_name"]) for f in rle["frames"]] == [(i, f"{i:05d}") for i in (1, 2, 3)]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames"], summary["frame_range"], summary["video_frames"]) == (3, [1, 3], NUM_FRAMES)
    assert {name: t["frames_tracked"] for name, t in summary["trackers"].items()} == {
        "sam2": 3,
        "sam2long": 3,
    }


@pytest.mark.parametrize(
    "direction, tracked, outside",
    [("--reverse", ["00006", "00007"], "4"), ("--both", ["00003", "00004", "00005"], "7")],
)
def test_max_frames_counts_per_direction(
    first_frames, model_args, tmp_path, caplog, direction, tracked, outside
) -> None:
    """--reverse: N frames back from the latest prompt; --both: N each way from the earliest."""
    out = tmp_path / "out"
    argv = ["segment", str(first_frames(8)), "--out", str(out), "--tracker", "sam2", direction]
    argv += [
        "--frame",
        "4",
        "--obj",
        "1",
        "--point",
        "198,112",
        "--frame",
        "7",
        "--obj",
        "2",
        "--box",
        "75,65,140,200",
    ]
    with caplog.at_level(logging.WARNING, logger="sam2long"):
        assert main([*argv, "--max_frames", "2", *model_args]) == 0
    assert sorted(p.stem for p in (out / "masks" / "001").glob("*.png")) == tracked
    assert sorted(p.stem for p in (out / "palette").glob("*.png")) == tracked
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frame_range"] == [int(tracked[0]), int(tracked[-1])]
    assert summary["frames"] == summary["trackers"]["sam2"]["frames_tracked"] == len(tracked)
    assert f"prompts on frame(s) {outside} lie outside the frames tracked with --max_frames 2" in caplog.text


def test_max_frames_must_be_positive(clip: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(clip), "--point", "10,10", "--out", str(tmp_path / "o"), "--max_frames", "0"])
    assert exit_.value.code == 2
    assert "--max_frames: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_masks_are_named(clip: Path, make_checkpoint, tmp_path: Path, caplog) -> None:
    absent = make_checkpoint(CFG, seed=0, obj_score_bias=-10.0)  # every object predicted absent
    argv = ["segment", str(clip), "--prompts", str(_prompts(tmp_path, PROMPTS)), "--out", str(tmp_path / "o")]
    argv += ["--config", CFG, "--checkpoint", str(absent), "--hydra_overrides", "++model.image_size=256"]
    with caplog.at_level(logging.WARNING, logger="sam2long"):
        assert main([*argv, "--device", "cpu", "--tracker", "sam2", "--max_frames", "2"]) == 0
    assert "sam2: the mask of object(s) 1, 2 is empty on every tracked frame" in caplog.text


def test_help_is_plain_text_and_explains_the_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "sam2long.segment" in text and "``" not in text and ":mod:" not in text
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--tracker {sam2,sam2long,samurai,sam2long-samurai,dam4sam,sam2long-dam4sam} sam2long (the memory tree" in text
    assert "--max_frames N track at most N frames, from the earliest prompted frame forwards" in text
    assert "Every output and summary.json cover the tracked frames only" in text
    assert "not with --config" in text
