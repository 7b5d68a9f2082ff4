"""The application pipeline: one tracking loop (:mod:`sam2long.pipeline`), one set of writers with one
abort rule (:mod:`sam2long.outputs`, :mod:`sam2long.export`), one builder (:mod:`sam2long.tracker_spec`),
and every application (``sam2long segment`` file and live, the demo, ``sam2long-vos``) going through them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sam2long.config import SAM2LongConfig
from sam2long.export import PalettePngWriter, PerObjectPngWriter
from sam2long.mask_io import DAVIS_PALETTE, TEMP_PREFIX, merge_objects, read_mask, write_png
from sam2long.outputs import write_outputs
from sam2long.pipeline import Masks, TrackResult, propagate, track
from sam2long.segment import track_live
from sam2long.tracker_spec import TrackerSpec

HEIGHT, WIDTH, NUM_FRAMES = 12, 16, 6
CUSTOM_PALETTE = [0, 0, 0, 200, 10, 10, 10, 200, 10, 30, 30, 220]


class FakeSource:
    """A frame source of ``NUM_FRAMES`` grey frames."""

    size = (HEIGHT, WIDTH)
    frame_names = [f"{i:05d}" for i in range(NUM_FRAMES)]
    fps = 10.0

    def __len__(self) -> int:
        return NUM_FRAMES

    def get(self, frame_idx: int) -> np.ndarray:
        return np.full((HEIGHT, WIDTH, 3), 20 * frame_idx, np.uint8)


class FakePredictor:
    """The public API of a video predictor, with masks that say which frame and object made them:
    object ``o`` covers column ``frame + o`` on frame ``frame`` (logit 1, -1 elsewhere)."""

    def init_state(self, source) -> SimpleNamespace:
        """The fields of a session the application layer reads."""
        return SimpleNamespace(video_height=HEIGHT, video_width=WIDTH, obj_ids=[], prompted=set())

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, box=None):
        if obj_id not in state.obj_ids:
            state.obj_ids.append(obj_id)
        state.prompted.add(frame_idx)

    def propagate_in_video(
        self, state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False, before_frame=None
    ):
        start = min(state.prompted) if start_frame_idx is None else start_frame_idx
        limit = NUM_FRAMES if max_frame_num_to_track is None else max_frame_num_to_track
        stop = max(start - limit, 0) - 1 if reverse else min(start + limit, NUM_FRAMES - 1) + 1
        for frame_idx in range(start, stop, -1 if reverse else 1):
            if before_frame is not None:
                before_frame(frame_idx)
            logits = -torch.ones(len(state.obj_ids), 1, HEIGHT, WIDTH)
            for row, obj_id in enumerate(state.obj_ids):
                logits[row, 0, :, (frame_idx + obj_id) % WIDTH] = 1.0
            yield frame_idx, list(state.obj_ids), logits


def prompted_state(predictor: FakePredictor, frames=(2,), obj_ids=(1, 2)) -> SimpleNamespace:
    state = predictor.init_state(None)
    for frame_idx in frames:
        for obj_id in obj_ids:
            predictor.add_new_points_or_box(state, frame_idx, obj_id, points=[[1, 1]], labels=[1])
    return state


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TEMP_PREFIX}*"))


# --------------------------------------------------------------------------- the tracking loop


@pytest.mark.parametrize(
    "direction, max_frames, expected",
    [
        ("forward", None, [2, 3, 4, 5]),
        ("forward", 2, [2, 3]),
        ("reverse", None, [4, 3, 2, 1, 0]),
        ("both", 2, [2, 3, 1]),
        ("both", None, [2, 3, 4, 5, 1, 0]),
    ],
)
def test_directions_start_on_the_prompted_frames(direction, max_frames, expected) -> None:
    predictor = FakePredictor()
    state = prompted_state(predictor, frames=(2, 4))
    frames = propagate(predictor, state, direction, max_frames, prompted_frames=[2, 4])
    assert [frame_idx for frame_idx, _, _ in frames] == expected


def test_reverse_needs_the_prompted_frames() -> None:
    predictor = FakePredictor()
    with pytest.raises(ValueError, match="needs the prompted frames"):
        list(propagate(predictor, prompted_state(predictor), "reverse"))


def test_track_yields_binary_masks_stores_them_and_records_the_run(tmp_path: Path) -> None:
    predictor = FakePredictor()
    state = prompted_state(predictor)
    result = TrackResult("fake", tmp_path / "masks")
    frames = list(
        track(predictor, state, result, frame_names=FakeSource.frame_names, max_frames=3, prompted_frames=[2])
    )
    assert [f.index for f in frames] == [2, 3, 4] and frames[0].obj_ids == (1, 2)
    mask = frames[1].masks[2]
    assert (
        mask.dtype == np.bool_ and mask.shape == (HEIGHT, WIDTH) and mask[:, 5].all() and mask.sum() == HEIGHT
    )
    assert dict(frames).keys() == {2, 3, 4}  # frames are (index, masks) pairs
    for frame in frames:
        for obj_id, expected in frame.masks.items():
            stored = read_mask(tmp_path / "masks" / f"{obj_id:03d}" / f"{frame.index:05d}.png")
            assert np.array_equal(stored == 1, expected)
    assert result.frames == (2, 3, 4) and result.frames_tracked == 3
    assert (result.first_frame, result.last_frame, result.obj_ids) == (2, 4, (1, 2))
    assert result.seconds > 0 and result.empty_objects == []
    assert result.summary()["objects"] == [1, 2] and "reprompts" not in result.summary()


def test_score_threshold_and_logits_filter() -> None:
    predictor = FakePredictor()
    result = TrackResult("fake")
    frames = track(
        predictor,
        prompted_state(predictor),
        result,
        score_thresh=2.0,
        logits_filter=lambda logits: logits * 3,
        max_frames=1,
    )
    assert [int(m.sum()) for m in next(frames).masks.values()] == [HEIGHT, HEIGHT]
    unfiltered = track(predictor, prompted_state(predictor), TrackResult("fake"), score_thresh=2.0)
    assert not any(mask.any() for frame in unfiltered for mask in frame.masks.values())


def test_a_run_stopped_early_keeps_its_record() -> None:
    predictor = FakePredictor()
    result = TrackResult("fake")
    with contextlib.closing(track(predictor, prompted_state(predictor), result)) as frames:
        for frame in frames:
            if frame.index == 3:
                break
    assert result.frames == (2, 3) and result.obj_ids == (1, 2)


# --------------------------------------------------------------------------- one set of PNG writers


def _mask_writer_reference(folder: Path, per_obj_png_file: bool, palette, name: str, masks: Masks) -> None:
    """What ``sam2long.vos.dataset.MaskWriter`` wrote (before its layouts moved into sam2long.export)."""
    if not per_obj_png_file:
        write_png(folder / f"{name}.png", merge_objects(masks, HEIGHT, WIDTH), palette)
        return
    for obj_id, mask in masks.items():
        write_png(folder / f"{obj_id:03d}" / f"{name}.png", np.asarray(mask).reshape(HEIGHT, WIDTH), palette)


@pytest.mark.parametrize("palette", [CUSTOM_PALETTE, DAVIS_PALETTE, list(DAVIS_PALETTE)])
@pytest.mark.parametrize("per_obj_png_file", [False, True])
def test_dataset_layouts_equal_what_the_vos_mask_writer_wrote(
    tmp_path: Path, per_obj_png_file, palette
) -> None:
    rng = np.random.default_rng(0)
    frames = {
        "00000": {obj_id: rng.random((1, HEIGHT, WIDTH)) > 0.6 for obj_id in (1, 3, 12)},
        "00001": {1: np.zeros((1, HEIGHT, WIDTH), bool), 7: rng.random((1, HEIGHT, WIDTH)) > 0.5},
        "00002": {},
    }
    layout = PerObjectPngWriter if per_obj_png_file else PalettePngWriter
    writer = layout(tmp_path / "new", size=(HEIGHT, WIDTH), palette=palette)
    for name, masks in frames.items():
        writer.write(name, masks)
        _mask_writer_reference(tmp_path / "old", per_obj_png_file, palette, name, masks)
    old = sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*.png"))
    new = sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*.png"))
    assert old == new and len(new) == (5 if per_obj_png_file else 3)
    for path in new:
        assert (tmp_path / "new" / path).read_bytes() == (tmp_path / "old" / path).read_bytes()


# --------------------------------------------------------------------------- one abort rule


def _stored_result(tmp_path: Path, name: str) -> TrackResult:
    predictor = FakePredictor()
    result = TrackResult(name, tmp_path / name / "masks")
    for _ in track(
        predictor, prompted_state(predictor, frames=(0,)), result, frame_names=FakeSource.frame_names
    ):
        pass
    return result


class Stop(RuntimeError):
    pass


def _stop_at(frame: int):
    def on_frame(frame_idx: int) -> None:
        if frame_idx == frame:
            raise Stop(f"stopped at frame {frame_idx}")

    return on_frame


@pytest.mark.parametrize("with_compare", [False, True])
def test_second_pass_aborts_every_writer_on_an_error(tmp_path: Path, with_compare: bool) -> None:
    main = _stored_result(tmp_path, "main")
    compare = _stored_result(tmp_path, "compare") if with_compare else None
    out = tmp_path / "out"
    with pytest.raises(Stop):
        write_outputs(FakeSource(), main, out, 10.0, range(NUM_FRAMES), compare, on_frame=_stop_at(2))
    assert not (out / "overlay.mp4").exists() and not (out / "compare.mp4").exists()
    assert not (out / "masks_rle.json").exists() and temp_files(tmp_path) == []
    assert sorted(p.stem for p in (out / "palette").iterdir()) == ["00000", "00001", "00002"]  # whole files

    # a writer failing as it closes (no frame to encode) aborts the others too: nothing is left
    with pytest.raises(ValueError, match="no frames"):
        write_outputs(FakeSource(), main, tmp_path / "empty", 10.0, [], compare)
    assert [p for p in (tmp_path / "empty").rglob("*") if p.is_file()] == []


def test_second_pass_writes_every_file(tmp_path: Path) -> None:
    main, compare = _stored_result(tmp_path, "main"), _stored_result(tmp_path, "compare")
    done: list[int] = []
    write_outputs(FakeSource(), main, tmp_path / "out", 10.0, range(1, 4), compare, on_frame=done.append)
    assert done == [1, 2, 3]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"palette", "overlay.mp4", "compare.mp4", "masks_rle.json"}
    rle = json.loads((out / "masks_rle.json").read_text())
    assert [f["frame_idx"] for f in rle["frames"]] == [1, 2, 3]
    labels = read_mask(out / "palette" / "00002.png")
    assert (labels[:, 3] == 1).all() and (labels[:, 4] == 2).all()


def test_live_pass_aborts_its_overlay_on_an_error(tmp_path: Path) -> None:
    from sam2long.prompts import Prompt

    prompts = [Prompt(1, 0, points=[[1.0, 1.0]]), Prompt(2, 2, box=[0.0, 0.0, 4.0, 4.0])]
    shown: list[int] = []

    def show(image: np.ndarray) -> bool:
        shown.append(len(shown))
        if len(shown) == 3:
            raise Stop("window closed badly")
        return True

    with pytest.raises(Stop):
        track_live("fake", FakePredictor(), FakeSource(), prompts, tmp_path / "live", 10.0, show=show)
    assert not (tmp_path / "live" / "overlay.mp4").exists() and temp_files(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "live" / "masks").iterdir()) == ["001", "002"]

    result = track_live("fake", FakePredictor(), FakeSource(), prompts, tmp_path / "ok", 10.0)
    assert result.frames == tuple(range(NUM_FRAMES)) and result.obj_ids == (
        1,
        2,
    )  # object 2 joined on frame 2
    assert (tmp_path / "ok" / "overlay.mp4").is_file() and temp_files(tmp_path) == []
    stopped = track_live("fake", FakePredictor(), FakeSource(), prompts, None, 10.0, show=lambda image: False)
    assert stopped.frames == (0,) and stopped.obj_ids == (1,)


# --------------------------------------------------------------------------- one builder


def test_tracker_spec_builds_both_trackers_by_name() -> None:
    sam2long = TrackerSpec.create("sam2long", "cfg.yaml", "ckpt.pt", lambda preset: SAM2LongConfig(num_pathways=2))
    assert sam2long.sam2long_config.num_pathways == 2 and sam2long.label() == "SAM2Long, 2 pathways"
    assert sam2long.max_lag is None and sam2long.describe()["num_pathways"] == 2

    def not_read(preset) -> SAM2LongConfig:
        raise AssertionError("SAM 2 takes no SAM2Long settings")

    sam2 = TrackerSpec.create("sam2", "cfg.yaml", "ckpt.pt", not_read, "paper")
    assert sam2 == sam2long.sam2_baseline() and sam2.describe() == {"tracker": "sam2", "preset": None}
    assert sam2.max_lag == 0 and sam2.label() == "SAM 2"
    samurai = TrackerSpec.create("samurai", "cfg.yaml", "ckpt.pt", SAM2LongConfig.resolve)
    assert samurai.preset == "samurai" and samurai.sam2long_config == SAM2LongConfig.from_preset("samurai")
    assert samurai.label() == "SAMURAI, 1 pathway"
    with pytest.raises(ValueError, match="unknown tracker 'sam3'"):
        TrackerSpec.create("sam3", "cfg.yaml", "ckpt.pt", SAM2LongConfig.resolve)
    with pytest.raises(ValueError, match="exactly with the tree trackers"):
        TrackerSpec("sam2", "cfg.yaml", "ckpt.pt", SAM2LongConfig())


# --------------------------------------------------------------------------- every application


CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ("++model.image_size=256",)
CLIP = Path(__file__).resolve().parents[1] / "examples" / "bedroom.mp4"  # the test frames as H.264


def test_every_application_tracks_through_the_one_pipeline(
    make_checkpoint, first_frames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sam2long segment`` (file and live), the demo and ``sam2long-vos`` all record their frames in a
    :class:`TrackResult` through :func:`sam2long.pipeline.track`."""
    pytest.importorskip("av")
    from sam2long.cli import main as segment_main
    from sam2long.vos.cli import main as vos_main

    seen: dict[str, list[int]] = {}
    add_frame = TrackResult.add_frame

    def spy(self: TrackResult, frame) -> None:
        seen.setdefault(self.name, []).append(frame.index)
        add_frame(self, frame)

    monkeypatch.setattr(TrackResult, "add_frame", spy)
    ckpt = str(make_checkpoint(CFG, seed=0, obj_score_bias=1.0))
    frames = first_frames(3)
    model = ["--config", CFG, "--checkpoint", ckpt, "--hydra_overrides", *OVERRIDES, "--device", "cpu"]
    prompt = ["--point", "198,112"]

    assert segment_main(["segment", str(frames), *prompt, "--out", str(tmp_path / "file"), *model]) == 0
    assert seen.pop("sam2long") == [0, 1, 2]
    summary = json.loads((tmp_path / "file" / "summary.json").read_text())
    assert summary["trackers"]["sam2long"]["frames_tracked"] == 3

    live = ["segment", str(CLIP), "--live", "--max_frames", "3", *prompt, "--out", str(tmp_path / "live")]
    assert segment_main([*live, "--tracker", "sam2", *model]) == 0
    assert seen.pop("sam2") == [0, 1, 2] and (tmp_path / "live" / "overlay.mp4").is_file()

    from sam2long.demo.session import DemoEngine, ModelSettings

    engine = DemoEngine(ModelSettings(CFG, ckpt, OVERRIDES, "cpu"))
    session = engine.open_session(frames, copy=False)
    try:
        session.click(198.0, 112.0)
        run = session.propagate(SAM2LongConfig(num_pathways=2), 2, compare=True)
    finally:
        session.close()
    assert seen.pop("SAM2Long") == [0, 1] and seen.pop("SAM 2") == [0, 1]
    assert run.sam2long.frames == (0, 1) and run.sam2long_config.num_pathways == 2

    videos, annotations = tmp_path / "data" / "JPEGImages", tmp_path / "data" / "Annotations" / "clip"
    videos.mkdir(parents=True)
    (videos / "clip").symlink_to(frames, target_is_directory=True)
    labels = np.zeros((270, 480), np.uint8)
    labels[60:200, 75:140] = 1
    annotations.mkdir(parents=True)
    Image.fromarray(labels).save(annotations / "00000.png")
    vos = ["--base_video_dir", str(videos), "--input_mask_dir", str(annotations.parent)]
    vos += ["--output_mask_dir", str(tmp_path / "vos"), "--sam2_cfg", CFG, "--sam2_checkpoint", ckpt]
    assert vos_main([*vos, "--hydra_overrides", *OVERRIDES, "--device", "cpu", "--num_pathway", "2"]) == 0
    assert seen.pop("clip") == [0, 1, 2] and seen == {}
    assert sorted(p.name for p in (tmp_path / "vos" / "clip").iterdir()) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]
