"""The VOT toolkit runs ``sam2long-vot`` over TraX: region conversions (mask offsets exact); the toolkit's
own commands (``vot initialize``, ``vot evaluate``, ``vot analysis``) on a tiny local workspace of bedroom
frames: short-term masks equal our live-mode SAM 2 on the same frames, and several objects (VOTS), one a
rectangle given on a later frame, under SAM2Long; in process, SAM2Long answers frames it has not decided
yet, and each initialize request starts a new session."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from extras import require, unavailable

require("trax", "pip install -e '.[vot]'")
require("vot", "pip install -e '.[vot]'")
if metadata.version("vot-toolkit") != "0.9.0":  # the extra's pin; other releases differ in layout and CLI
    unavailable(f"needs vot-toolkit 0.9.0, found {metadata.version('vot-toolkit')}: pip install -e '.[vot]'")

from sam2long.sot.vot import (  # noqa: E402
    VotInputError,
    WholeLines,
    box_mask,
    encode_region,
    main,
    place_mask,
    target_from_region,
)

ROOT = Path(__file__).resolve().parents[1]
BEDROOM = ROOT / "tests" / "assets" / "bedroom"
CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDE = "++model.image_size=256"
NUM_FRAMES = 5
SIZE = (270, 480)  # bedroom frames, HxW
BOX = (100, 60, 80, 50)  # x, y, width, height of object "b"
JOIN = 2  # object "b" is given on this frame


# ---------------------------------------------------------------------------------------------- regions


def test_mask_offset_is_placed_exactly() -> None:
    from trax.region import Mask

    rng = np.random.default_rng(0)
    crop = (rng.random((7, 9)) > 0.5).astype(np.uint8)
    crop[0, 0] = 1
    target = target_from_region(Mask.create(crop, 30, 12), 1, 0, (40, 50), "auto")
    expected = np.zeros((40, 50), dtype=bool)
    expected[12:19, 30:39] = crop > 0
    assert target.output == "mask" and target.box is None
    np.testing.assert_array_equal(target.mask, expected)
    # a mask reaching past the image is cut at its border
    clipped = place_mask(np.ones((5, 5), np.uint8), (47, 37), (40, 50))
    assert clipped.sum() == 3 * 3 and clipped[37:, 47:].all()


def test_answers_round_trip_through_trax() -> None:
    mask = np.zeros(SIZE, dtype=bool)
    mask[40:90, 200:260] = True
    mask[100, 300] = True
    region = encode_region(mask, "mask")
    assert region.offset() == (200, 40) and region.size() == (101, 61)
    np.testing.assert_array_equal(place_mask(region.array(), region.offset(), SIZE), mask)
    assert encode_region(mask, "rectangle").bounds() == (200, 40, 101, 61)
    empty = encode_region(np.zeros(SIZE, dtype=bool), "mask")
    assert not place_mask(empty.array(), empty.offset(), SIZE).any()


def test_rectangle_becomes_a_box_prompt() -> None:
    from trax.region import Rectangle

    target = target_from_region(Rectangle.create(*BOX), 2, JOIN, SIZE, "auto")
    assert target.output == "rectangle" and target.box == (100.0, 60.0, 180.0, 110.0)
    assert encode_region(box_mask(target.box, SIZE), "rectangle").bounds() == BOX


def test_bad_regions_are_named() -> None:
    from trax.region import Mask, Polygon, Rectangle

    with pytest.raises(VotInputError, match="object 3 on frame 0: the mask region is empty"):
        target_from_region(Mask.create(np.ones((4, 4), np.uint8), 60, 0), 3, 0, (40, 50), "auto")
    with pytest.raises(VotInputError, match="object 1 on frame 2: the rectangle .* has no area"):
        target_from_region(Rectangle.create(5, 5, 0, 4), 1, 2, (40, 50), "auto")
    with pytest.raises(VotInputError, match="region type 'polygon' is not supported"):
        target_from_region(Polygon.create([(1.0, 1.0), (9.0, 1.0), (5.0, 8.0)]), 1, 0, (40, 50), "auto")


def test_stderr_goes_out_in_whole_lines() -> None:
    class Sink:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> None:
            self.writes.append(text)

        def flush(self) -> None:
            pass

    sink = Sink()
    lines = WholeLines(sink)
    lines.write("\rpropagate: 1 frame")
    assert sink.writes == []
    lines.write("\rpropagate: 2 frames")
    lines.write("\n")
    assert "".join(sink.writes) == "propagate: 1 frame\npropagate: 2 frames\n"


def test_command_refuses_to_run_without_the_toolkit(monkeypatch, capsys) -> None:
    monkeypatch.delenv("TRAX", raising=False)
    monkeypatch.delenv("TRAX_SOCKET", raising=False)
    assert main(["--tracker", "sam2", "--config", CFG, "--checkpoint", "missing.pt"]) == 2
    assert "started by the VOT toolkit" in capsys.readouterr().err
    assert main(["--tracker", "sam2", "--num_pathways", "2"]) == 2
    assert "--tracker sam2 takes no SAM2Long settings (--num_pathways)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- toolkit


def _toolkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``vot ARGS`` as the toolkit's CLI runs it; the toolkit's update check gets a refused proxy, so
    nothing reaches the network."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "vot", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    logs = (
        "".join(p.read_text() for p in sorted((cwd / "logs").glob("*.log")))
        if (cwd / "logs").is_dir()
        else ""
    )
    assert done.returncode == 0, f"vot {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}\n{logs}"
    return done


def _workspace(root: Path, stack: str, sequences: dict, command: str) -> Path:
    """``vot initialize`` on a local stack (no dataset URL: nothing is downloaded), then the sequences in
    the toolkit's layout (``color/%08d.jpg``, ``groundtruth[_ID].txt``, ``sequence``, ``list.txt``) and
    ``trackers.ini`` with our command."""
    from vot.region.io import write_trajectory

    (root / "stack.yaml").write_text(stack)
    workspace = root / "workspace"
    _toolkit("initialize", str(root / "stack.yaml"), "--workspace", str(workspace), cwd=root)
    frames = sorted(BEDROOM.glob("*.jpg"))[:NUM_FRAMES]
    for name, objects in sequences.items():
        folder = workspace / "sequences" / name
        (folder / "color").mkdir(parents=True)
        for index, frame in enumerate(frames):
            shutil.copyfile(frame, folder / "color" / f"{index + 1:08d}.jpg")
        for obj, regions in objects.items():
            write_trajectory(
                str(folder / ("groundtruth.txt" if obj is None else f"groundtruth_{obj}.txt")), regions
            )
        (folder / "sequence").write_text(
            f"name={name}\nfps=30\nformat=default\nchannels.color=color/%08d.jpg\n"
        )
    (workspace / "sequences" / "list.txt").write_text("".join(f"{name}\n" for name in sequences))
    (workspace / "trackers.ini").write_text(
        f"[ours]\nlabel = ours\nprotocol = trax\ncommand = {command}\ntimeout = 120\n"
    )
    return workspace


def _command(tracker: str, checkpoint: Path, *extra: str) -> str:
    args = [sys.executable, "-m", "sam2long.sot.vot", "--tracker", tracker, "--config", CFG]
    args += ["--checkpoint", str(checkpoint), "--hydra_overrides", OVERRIDE, "--device", "cpu"]
    args += ["--dtype", "float32"]
    return shlex.join([*args, *extra])


def _object_mask() -> np.ndarray:
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[80:200, 150:320] = 1
    mask[60:80, 200:230] = 1
    return mask


def _result(workspace: Path, sequence: str, name: str) -> list:
    from vot.region.io import read_trajectory

    folder = workspace / "results" / "ours" / "baseline" / sequence
    files = sorted(folder.glob(f"{name}.*"))
    assert [f.suffix for f in files] in ([".bin"], [".txt"]), (
        f"no result {name} in {folder}: {list(folder.iterdir())}"
    )
    return read_trajectory(str(files[0]))


def _rasterize(region) -> np.ndarray:
    return region.rasterize((0, 0, SIZE[1] - 1, SIZE[0] - 1)).astype(bool)


def _live_masks(checkpoint: Path, folder: Path) -> dict[int, np.ndarray]:
    """Our SAM 2 in live mode (what ``sam2long-vot`` runs) on the frames of ``folder``, in process."""
    from sam2.utils.frame_sources import read_image_file
    from sam2long.live import LiveStreamSource
    from sam2long.sot.vot import QueueCapture
    from sam2long.tracker_spec import TrackerSpec

    spec = TrackerSpec.create(
        "sam2", CFG, str(checkpoint), lambda preset: None, hydra_overrides=(OVERRIDE,), apply_postprocessing=True
    )
    predictor = spec.build("cpu", non_overlap_masks=False)
    capture = QueueCapture()
    for path in sorted(folder.glob("*.jpg")):
        capture.put(np.ascontiguousarray(read_image_file(path)[..., ::-1]))
    capture.end()
    source = LiveStreamSource("frames", drop="none", buffer=1, capture=capture)
    try:
        with torch.inference_mode():
            state = predictor.init_state(source)
            predictor.add_new_mask(state, 0, 1, _object_mask().astype(bool))
            return {f: (m[0, 0] > 0).cpu().numpy() for f, _, m in predictor.propagate_in_video(state)}
    finally:
        source.close()


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint) -> Path:
    return make_checkpoint(CFG, seed=0, obj_score_bias=1.0)


def test_toolkit_evaluates_short_term_masks(tmp_path: Path, checkpoint: Path) -> None:
    from vot.region import Mask, Special

    stack = (
        "title: tiny short-term\nexperiments:\n  baseline:\n    type: unsupervised\n    repetitions: 1\n"
        "    analyses:\n      - type: average_accuracy\n        name: accuracy\n        burnin: 0\n"
    )
    truth = Mask(_object_mask(), optimize=True)  # stored cropped, with an offset
    assert truth.offset != (0, 0)
    workspace = _workspace(
        tmp_path, stack, {"bedroom": {None: [truth] * NUM_FRAMES}}, _command("sam2", checkpoint)
    )
    _toolkit("evaluate", "ours", "--workspace", str(workspace), cwd=workspace)
    regions = _result(workspace, "bedroom", "bedroom_001")
    assert len(regions) == NUM_FRAMES
    assert isinstance(regions[0], Special) and regions[0].code == 1  # the initialization frame
    assert all(isinstance(r, Mask) for r in regions[1:])

    # the toolkit recorded exactly the masks of our SAM 2 in live mode on the same frames and weights
    expected = _live_masks(checkpoint, workspace / "sequences" / "bedroom" / "color")
    for index in range(1, NUM_FRAMES):
        np.testing.assert_array_equal(_rasterize(regions[index]), expected[index], err_msg=f"frame {index}")

    _toolkit("analysis", "ours", "--workspace", str(workspace), "--format", "json", cwd=workspace)
    (report,) = (workspace / "analysis").glob("*.json")
    accuracy = json.loads(report.read_text())["results"]["baseline"]["results"]
    assert 0.0 <= float(np.ravel(accuracy)[0]) <= 1.0


def test_toolkit_evaluates_several_objects_with_sam2long(tmp_path: Path, checkpoint: Path) -> None:
    from vot.region import Mask, Rectangle, Special

    stack = (
        "title: tiny VOTS\nexperiments:\n  baseline:\n    type: unsupervised\n    repetitions: 1\n"
        "    multiobject: True\n"
    )
    objects = {
        "a": [Mask(_object_mask(), optimize=True)] * NUM_FRAMES,
        "b": [Special(0)] * JOIN + [Rectangle(*BOX)] * (NUM_FRAMES - JOIN),
    }
    command = _command("sam2long", checkpoint, "--num_pathways", "2")
    workspace = _workspace(tmp_path, stack, {"pair": objects}, command)
    _toolkit("evaluate", "ours", "--workspace", str(workspace), cwd=workspace)

    first = _result(workspace, "pair", "pair_a_001")
    assert len(first) == NUM_FRAMES and isinstance(first[0], Special)
    assert all(isinstance(r, Mask) for r in first[1:])
    late = _result(workspace, "pair", "pair_b_001")
    assert len(late) == NUM_FRAMES
    assert all(isinstance(r, Special) for r in late[:JOIN])  # not given yet
    assert all(isinstance(r, Rectangle) for r in late[JOIN:])  # answered in the format it was given in
    joined = late[JOIN]
    assert (
        joined.x,
        joined.y,
        joined.width,
        joined.height,
    ) == BOX  # the answer on its first frame is its box


def test_sam2long_answers_each_frame_before_its_pathways_agree(checkpoint: Path, monkeypatch) -> None:
    """TraX is causal: SAM2Long (exact, no max_lag) answers every frame when the next one is asked for,
    with its best pathway, also where the tree has not decided the frame yet."""
    from trax import TraxStatus
    from trax.server import Request

    from sam2long.config import SAM2LongConfig
    from sam2long.sot import vot
    from sam2long.tracker_spec import TrackerSpec

    init, requests = _requests(0, NUM_FRAMES)
    server = FakeServer([*requests, Request(TraxStatus.QUIT, None, None, {})])
    final_after = {}  # frame -> answers sent when its final output came
    record = vot.Answers.final

    def final(self, frame, masks):
        final_after[frame] = len(server.statuses)
        record(self, frame, masks)

    monkeypatch.setattr(vot.Answers, "final", final)
    spec = TrackerSpec.create(
        "sam2long", CFG, str(checkpoint), lambda preset: SAM2LongConfig(num_pathways=2), hydra_overrides=(OVERRIDE,)
    )
    predictor = spec.build("cpu", non_overlap_masks=False)
    ended_by = vot.run_session(server, predictor, init, "auto")

    assert ended_by.type == TraxStatus.QUIT
    assert len(server.statuses) == NUM_FRAMES and all(len(s) == 1 for s in server.statuses)
    assert sorted(final_after) == list(range(NUM_FRAMES))
    late = [f for f, sent in final_after.items() if sent > f]  # answered before it was final
    assert late, f"every frame was final before its answer was due: {final_after}"
    first = server.statuses[0][0][0]
    np.testing.assert_array_equal(place_mask(first.array(), first.offset(), SIZE), _object_mask() > 0)


class FakeServer:
    """The toolkit's side of TraX in process: hands out ``requests`` and keeps the answers."""

    def __init__(self, requests: list) -> None:
        self.requests, self.statuses = iter(requests), []

    def wait(self):
        return next(self.requests)

    def status(self, objects, properties=None) -> None:
        self.statuses.append(objects)


def _requests(start: int, stop: int) -> tuple:
    """An initialize request on bedroom frame ``start`` (the object's mask, with an offset) and the frame
    requests up to ``stop``."""
    from trax import TraxStatus
    from trax.image import FileImage
    from trax.region import Mask
    from trax.server import Request

    frames = [str(p) for p in sorted(BEDROOM.glob("*.jpg"))[start:stop]]
    truth = Mask.create(np.ascontiguousarray(_object_mask()[60:200, 150:320]), 150, 60)
    init = Request(TraxStatus.INITIALIZE, {"color": FileImage.create(frames[0])}, [(truth, {})], {})
    return init, [Request(TraxStatus.FRAME, {"color": FileImage.create(f)}, None, {}) for f in frames[1:]]


def test_each_initialize_request_starts_a_new_session(checkpoint: Path) -> None:
    """Multi-start experiments initialize again in the same process: the first session ends there."""
    from trax import TraxStatus
    from trax.server import Request

    from sam2long.sot import vot
    from sam2long.tracker_spec import TrackerSpec

    first, first_frames = _requests(0, 3)
    second, second_frames = _requests(2, 5)
    server = FakeServer([*first_frames, second, *second_frames, Request(TraxStatus.QUIT, None, None, {})])
    spec = TrackerSpec.create("sam2", CFG, str(checkpoint), lambda preset: None, hydra_overrides=(OVERRIDE,))
    predictor = spec.build("cpu", non_overlap_masks=False)
    assert vot.run_session(server, predictor, first, "auto") is second
    assert len(server.statuses) == 3
    assert vot.run_session(server, predictor, second, "auto").type == TraxStatus.QUIT
    assert len(server.statuses) == 6
    restart = server.statuses[3][0][0]  # the second session's first answer: its own prompt
    np.testing.assert_array_equal(place_mask(restart.array(), restart.offset(), SIZE), _object_mask() > 0)
