"""The demo without a browser: clicks and previews, propagation outputs, pathway records, tab isolation,
upload checks, the pathway plot and the Gradio callbacks' error handling."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from extras import require

require("matplotlib", "pip install -e '.[demo]'")

from sam2long.demo.plots import pathway_series, plot_pathways  # noqa: E402
from sam2long.demo.session import (  # noqa: E402
    DemoEngine,
    DemoError,
    DemoSession,
    Limits,
    ModelSettings,
    tree_config,
)
from sam2long.mask_io import read_mask  # noqa: E402
from sam2long.predictor import PathwayStep  # noqa: E402

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ("++model.image_size=256",)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bedroom.mp4"
TREE = tree_config(3, 0.1, 2.0, (0.95, 1.05))
GIRL, BOY = (198.0, 112.0), (110.0, 130.0)


@pytest.fixture(scope="module")
def engine(make_checkpoint) -> DemoEngine:
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=1.0)
    return DemoEngine(ModelSettings(CFG, str(ckpt), OVERRIDES, "cpu", None))


@pytest.fixture()
def session(engine: DemoEngine, bedroom_dir: Path):
    s = engine.open_session(bedroom_dir, copy=False)
    yield s
    s.close()


def _direct_mask(engine: DemoEngine, video: Path, frame: int, points, labels) -> np.ndarray:
    """The mask the predictor itself gives for these clicks, outside the demo."""
    predictor = engine.sam2long()
    state = predictor.init_state(video)
    _, _, logits = predictor.add_new_points_or_box(state, frame, 1, points=points, labels=labels)
    return (logits[0, 0] > 0).cpu().numpy()


# --------------------------------------------------------------------------- clicks and previews


def test_clicks_update_prompts_and_the_preview(engine: DemoEngine, session: DemoSession, bedroom_dir) -> None:
    session.click(*GIRL, "positive")
    assert session.prompts[(1, 0)].points == [GIRL] and session.prompts[(1, 0)].labels == [1]
    preview = session.frame_masks()[1]
    np.testing.assert_array_equal(preview, _direct_mask(engine, bedroom_dir, 0, [GIRL], [1]))
    assert preview.any() and not preview.all()
    assert (
        "1 positive, 0 negative" in session.status() and f"mask {int(preview.sum())} px" in session.status()
    )

    session.click(300, 200, "negative")
    assert session.prompts[(1, 0)].points == [GIRL, (300.0, 200.0)] and session.prompts[(1, 0)].labels == [
        1,
        0,
    ]
    assert "1 positive, 1 negative" in session.status()
    session.undo_click()
    assert session.prompts[(1, 0)].labels == [1]

    # the click is drawn: a green dot at the click position
    image = session.render()
    assert image.shape == (270, 480, 3)
    r, g, b = image[112, 198].astype(int)
    assert g > 150 and r < 100 and b < 120


def test_box_takes_two_corners_and_rejects_a_degenerate_one(session: DemoSession) -> None:
    session.new_object()
    assert session.active_obj == 2 and session.objects == [1, 2]
    session.click(140, 200, "box")
    assert session.pending_corner == (140.0, 200.0) and (2, 0) not in session.prompts
    assert "opposite corner" in session.status()
    session.click(75, 65, "box")
    assert session.prompts[(2, 0)].box == (75.0, 65.0, 140.0, 200.0) and session.pending_corner is None
    assert session.frame_masks()[2].any()
    session.click(10, 10, "box")
    with pytest.raises(DemoError, match="too small"):
        session.click(11, 11, "box")
    assert session.prompts[(2, 0)].box == (75.0, 65.0, 140.0, 200.0)  # unchanged by the failed click
    with pytest.raises(DemoError, match="click mode"):
        session.click(5, 5, "lasso")


def test_clearing_the_last_prompt_removes_the_object(session: DemoSession) -> None:
    session.click(*GIRL)
    session.clear_frame()
    assert session.prompts == {} and 1 not in session.frame_masks()
    with pytest.raises(DemoError, match="no clicks yet"):
        session.propagate(TREE, 2)
    with pytest.raises(DemoError, match="no clicks"):
        session.undo_click()
    session.click(*GIRL)  # the object comes back
    assert session.propagate(TREE, 2).sam2long.frames == (0, 1)


def test_large_frames_are_shown_downscaled_and_clicks_mapped_back(make_checkpoint, bedroom_dir) -> None:
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=1.0)
    small = DemoEngine(ModelSettings(CFG, str(ckpt), OVERRIDES, "cpu"), Limits(max_display_side=240))
    session = small.open_session(bedroom_dir, copy=False)
    try:
        assert session.display_scale == 0.5
        assert session.render().shape == (135, 240, 3)
        session.click(GIRL[0] / 2, GIRL[1] / 2)
        assert session.prompts[(1, 0)].points == [GIRL]
    finally:
        session.close()


# --------------------------------------------------------------------------- propagation


def test_propagation_writes_outputs_and_pathway_records(
    engine: DemoEngine, session: DemoSession, bedroom_dir
) -> None:
    session.click(*GIRL)
    session.new_object()
    session.click(*BOY)
    progress: list[float] = []
    run = session.propagate(TREE, 3, compare=True, progress=lambda f, _: progress.append(f))
    assert run.sam2long.frames == (0, 1, 2) and run.sam2.frames == (0, 1, 2)
    assert run.sam2long.obj_ids == (1, 2)
    assert progress == sorted(progress) and progress[-1] == 1.0

    for path, width in ((run.overlay, 480), (run.compare, 2 * 480 + 8)):
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 3 and frames[0].shape == (270, width, 3)
    with zipfile.ZipFile(run.folder / "masks.zip") as zf:
        names = set(zf.namelist())
    for sub in ("masks/001", "masks/002", "palette", "sam2/masks/001"):
        assert {f"{sub}/{i:05d}.png" for i in range(3)} <= names
    rle = json.loads((run.folder / "masks_rle.json").read_text())
    assert [f["frame_idx"] for f in rle["frames"]] == [0, 1, 2]
    assert [o["obj_id"] for o in rle["frames"][0]["objects"]] == [1, 2]
    assert {p.name for p in run.files} == {
        "overlay.mp4",
        "compare.mp4",
        "masks.zip",
        "masks_rle.json",
        "pathways.json",
    }

    # the masks shown for a tracked frame are the run's PNGs; SAM 2 and SAM2Long share the prompt frame
    mask = read_mask(run.sam2long.masks_dir / "001" / "00001.png") > 0
    np.testing.assert_array_equal(session.frame_masks(1)[1], mask)
    np.testing.assert_array_equal(
        read_mask(run.sam2long.masks_dir / "001" / "00000.png"),
        read_mask(run.sam2.masks_dir / "001" / "00000.png"),
    )

    # the pathway records are the predictor's own observer records for the same prompts
    predictor = engine.sam2long(TREE)
    state = predictor.init_state(bedroom_dir)
    predictor.add_new_points_or_box(state, 0, 1, points=[GIRL], labels=[1])
    predictor.add_new_points_or_box(state, 0, 2, points=[BOY], labels=[1])
    expected: list[PathwayStep] = []
    for _ in predictor.propagate_in_video(state, max_frame_num_to_track=2, observer=expected.append):
        pass
    assert [(r.obj_id, r.frame_idx, r.kind) for r in run.records] == [
        (r.obj_id, r.frame_idx, r.kind) for r in expected
    ]
    for got, want in zip(run.records, expected):
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
        assert got.committed_frames == want.committed_frames
        assert all(node.pred_masks is None for node in got.created)  # masks are not kept
    kinds = [r.kind for r in run.records if r.obj_id == 1]
    assert kinds[0] == "prompt" and kinds[-1] == "end" and "branch" in kinds
    saved = json.loads((run.folder / "pathways.json").read_text())
    assert len(saved) == len(run.records) and saved[-1]["kind"] == "end"
    assert saved[2]["scores"] == pytest.approx(list(run.records[2].scores))

    assert session.plotted_objects() == [1, 2]
    figure = session.pathway_figure(2)
    assert len(figure.axes) == 3 and "object 2" in figure.axes[0].get_title()


def test_correction_on_a_later_frame_and_repropagation(session: DemoSession) -> None:
    session.click(*GIRL)
    first = session.propagate(TREE, 3)
    tracked = session.frame_masks(2)[1].copy()
    session.select_frame(2)
    session.click(*GIRL, "negative")
    assert session.prompted_frames(1) == [0, 2]
    assert not np.array_equal(session.frame_masks(2)[1], tracked)  # the preview shows the correction
    assert "frames 0, 2" in session.status()
    second = session.propagate(tree_config(2, 0.1, 2.0, None), 3)
    assert second.folder != first.folder and not first.folder.exists()
    assert [(r.frame_idx, r.kind) for r in second.records if r.kind == "prompt"] == [
        (0, "prompt"),
        (2, "prompt"),
    ]
    assert all(len(r.scores) <= 2 for r in second.records)
    np.testing.assert_array_equal(
        session.frame_masks(2)[1], read_mask(second.sam2long.masks_dir / "001" / "00002.png") > 0
    )


def test_sessions_never_share_prompts_or_results(engine: DemoEngine, bedroom_dir) -> None:
    a = engine.open_session(bedroom_dir, copy=False)
    b = engine.open_session(bedroom_dir, copy=False)
    try:
        a.click(*GIRL)
        a.new_object()
        a.click(*BOY)
        run = a.propagate(TREE, 2, compare=True)
        assert b.prompts == {} and b.objects == [1] and b.run is None and b.frame_masks(0) == {}
        assert a.work_dir != b.work_dir and not str(run.folder).startswith(str(b.work_dir))
        with pytest.raises(DemoError, match="no clicks"):
            b.propagate(TREE, 2)
        b.select_frame(3)
        b.click(*BOY)
        assert a.frame_idx == 0 and set(a.prompts) == {(1, 0), (2, 0)}
        assert b.propagate(TREE, 2).sam2long.frames == (3, 4)
        assert a.run is run and a.run.sam2long.frames == (0, 1)
        a.close()
        assert not a.work_dir.exists()
        with pytest.raises(DemoError, match="closed"):
            a.click(*GIRL)
        assert b.render().shape == (270, 480, 3)  # the other tab is unaffected
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- uploads and settings


def test_uploads_are_copied_and_checked(engine: DemoEngine, tmp_path: Path) -> None:
    session = engine.open_session(EXAMPLE)  # copied into the session's own folder
    try:
        assert session.video_path.parent.parent == session.work_dir and session.num_frames == 90
        assert session.fps == 30.0
    finally:
        session.close()
    assert not session.work_dir.exists()

    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    with pytest.raises(DemoError, match="not a video file"):
        engine.open_session(text)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 4096)
    with pytest.raises(DemoError, match="cannot read broken.mp4 as a video"):
        engine.open_session(broken)
    with pytest.raises(DemoError, match="no video at"):
        engine.open_session(tmp_path / "missing.mp4")
    tiny = DemoEngine(engine.model, Limits(max_upload_bytes=1000))
    with pytest.raises(DemoError, match=r"up to 0 MB|accepts videos up to"):
        tiny.open_session(EXAMPLE)
    short = DemoEngine(engine.model, Limits(max_video_frames=10))
    with pytest.raises(DemoError, match="90 frames; this demo accepts up to 10"):
        short.open_session(EXAMPLE)


def test_tree_settings_from_the_controls() -> None:
    config = tree_config("4", 0.3, 1.5, None)
    assert (config.num_pathways, config.iou_threshold, config.uncertainty) == (4, 0.3, 1.5)
    assert config.memory_modulation is None
    assert tree_config(3, 0.1, 2, [0.9, 1.1]).memory_modulation == (0.9, 1.1)
    with pytest.raises(DemoError, match="iou_threshold"):
        tree_config(3, 1.5, 2.0, None)
    with pytest.raises(DemoError, match="memory_modulation"):
        tree_config(3, 0.1, 2.0, (1.2, 1.0))
    samurai = tree_config(2, 0.5, 2.0, None, "samurai")
    assert samurai.num_pathways == 2 and samurai.motion_weight == 0.25 and samurai.memory_rule == "samurai"
    with pytest.raises(DemoError, match="dam4sam settings.*memory_modulation"):
        tree_config(1, 0.1, 2.0, (0.95, 1.05), "dam4sam")


# --------------------------------------------------------------------------- the pathway plot


def _step(frame, kind, scores=(), certain=None, committed=(), obj=1, extras=None) -> PathwayStep:
    n = len(scores)
    return PathwayStep(
        obj_id=obj,
        frame_idx=frame,
        kind=kind,
        certain=certain,
        pathway_nodes=tuple(range(n)),
        scores=tuple(scores),
        ious=tuple(0.5 + 0.1 * j for j in range(n)),
        obj_logits=tuple(1.0 - j for j in range(n)),
        best_pathway=0 if n else None,
        created=(),
        committed_frames=tuple(committed),
        forced_frame=None,
        stored_nodes=n,
        extras=extras,
    )


def test_pathway_series_and_plot_from_records() -> None:
    records = [
        _step(0, "prompt"),
        _step(1, "root", (0.0,)),
        _step(0, "prompt", obj=2),
        _step(2, "branch", (-0.1, -0.2, -0.3), certain=False),
        _step(3, "branch", (-0.2, -0.3, -0.5), certain=True, committed=(1, 2)),
        _step(4, "branch", (-0.3, -0.4, -0.6), certain=False),
        _step(None, "end", (-0.3, -0.4, -0.6), committed=(3, 4)),
    ]
    series = pathway_series(records, 1)
    assert series.frames.tolist() == [1, 2, 3, 4] and series.num_pathways == 3
    assert np.isnan(series.scores[0, 1:]).all() and series.scores[3].tolist() == [-0.3, -0.4, -0.6]
    assert series.ious[1].tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert series.uncertain_frames == (2, 4)
    assert series.coalesced_frames == (3,) and series.committed_frames == (1, 2, 3, 4)
    assert series.prompt_frames == (0,)

    figure = plot_pathways(records, 1, uncertainty=2.0)
    scores, ious, logits = figure.axes[:3]
    assert len(scores.lines) == 3 + 1 + 1  # 3 pathways, one prompt line, one coalescence line
    assert len(ious.patches) == 2 and len(logits.patches) == 3  # shaded uncertain frames (+ δ_conf band)
    figure.savefig(Path("/dev/null"), format="png")
    empty = plot_pathways(records, 7)
    assert "no pathway records" in empty.get_suptitle()


def test_plot_shows_motion_scores_and_distractor_memory_additions() -> None:
    motion = [{"motion_iou": None}, {"motion_iou": 0.8}, {"motion_iou": 0.6}]
    records = [
        _step(1, "root", (0.0,), extras={"motion": [None]}),
        _step(2, "branch", (-0.1, -0.2), extras={"motion": motion[1:], "distractor": [{"added": True}, None]}),
        _step(3, "branch", (-0.2, -0.3), extras={"motion": motion[:2]}),
    ]
    series = pathway_series(records, 1)
    assert np.isnan(series.motion[0]).all() and series.motion[1].tolist() == [0.8, 0.6]
    assert np.isnan(series.motion[2, 0]) and series.motion[2, 1] == 0.8
    assert series.drm_frames == (2,)
    figure = plot_pathways(records, 1)
    assert len(figure.axes) == 4 and figure.axes[3].get_ylabel().startswith("motion IoU")
    assert len(figure.axes[0].lines) == 2 + 1, "two pathways and the distractor-memory line"


# --------------------------------------------------------------------------- Gradio callbacks


def test_callbacks_report_errors_and_keep_serving(engine: DemoEngine, bedroom_dir, caplog) -> None:
    require("gradio", "pip install -e '.[demo]'")
    import gradio as gr

    from sam2long.demo.app import Callbacks, build_app, guarded

    cb = Callbacks(engine, bedroom_dir, max_frames=2)
    session, image, _, status, _, frames, *results = cb.on_load(None)
    assert isinstance(session, DemoSession) and image.shape == (270, 480, 3) and "8 frames" in status
    assert frames["value"] == 2 and results[:3] == [None, None, None]
    with pytest.raises(gr.Error, match="no clicks yet"):
        guarded(cb.on_propagate)(session, "sam2long", 3, 0.1, 2.0, True, 0.95, 1.05, 2, False)
    with pytest.raises(gr.Error, match="no video loaded"):
        guarded(cb.on_new_object)(None)

    def broken(_session):
        raise RuntimeError("boom")

    with pytest.raises(gr.Error, match="internal error.*boom"):
        guarded(broken)(session)
    assert "demo request broken failed" in caplog.text

    # after the failures the same session still serves clicks and propagation
    event = SimpleNamespace(index=[int(GIRL[0]), int(GIRL[1])])
    session, image, _, status, _, _ = cb.on_select(session, "positive", event)
    assert "1 positive" in status
    out = guarded(cb.on_propagate)(session, "sam2long", 2, 0.1, 2.0, False, 0.95, 1.05, 2, True)
    overlay, compare, figure, plot_objects, files = out[6:]
    assert overlay.endswith("overlay.mp4") and compare.endswith("compare.mp4")
    assert len(figure.axes) == 3 and plot_objects["value"] == 1 and len(files) == 5
    assert cb.on_plot(session, 1).axes[0].get_title().endswith("object 1")

    # SAMURAI's preset fills the controls; its run plots the motion IoU in a fourth panel
    controls = cb.on_tracker("samurai")
    assert controls == (1, 0.5, 2.0, False, 0.95, 1.05)
    out = guarded(cb.on_propagate)(session, "samurai", *controls, 2, False)
    assert len(out[8].axes) == 4 and out[8].axes[3].get_ylabel().startswith("motion IoU")

    # a new video in the tab replaces (and closes) the old session
    old_dir = session.work_dir
    new = cb.on_upload(session, str(EXAMPLE))[0]
    assert new is not session and session.closed and not old_dir.exists() and new.num_frames == 90
    assert engine.close_sessions() >= 1 and new.closed and not new.work_dir.exists()
    assert isinstance(build_app(engine, bedroom_dir, max_frames=2), gr.Blocks)


def test_command_line(tmp_path: Path) -> None:
    from sam2long.demo.launch import build_parser

    args = build_parser().parse_args([])
    assert (args.host, args.model, args.config, args.max_frames) == ("127.0.0.1", "sam2.1-tiny", None, 30)
    result = subprocess.run(
        [sys.executable, "-m", "sam2long.demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--checkpoint" in result.stdout and "--hydra_overrides" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "sam2long.demo", "--config", CFG], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "--config needs --checkpoint" in result.stderr
