"""Live streams: a real H.264 file read as a sequential-only OpenCV stream equals the file; SAM2Long's
output lag is bounded by max_lag; the drop policy counts what a slow tracker misses; an object prompted
mid-stream joins without disturbing the others."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.build_sam import build_sam2_video_predictor
from sam2.utils.frame_sources import FrameSourceError
from sam2long import build_sam2long_video_predictor
from sam2long.live import LiveStreamSource

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]
VIDEO = Path(__file__).resolve().parents[1] / "examples" / "bedroom.mp4"  # 480x270 H.264 with B-frames
NUM_FRAMES = 8
JOIN = 4


class PacedCapture:
    """An OpenCV-like capture over in-memory RGB frames delivered at ``fps`` (a camera)."""

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        self.frames, self.fps, self.next, self.start = frames, fps, 0, None

    def read(self):
        if self.next >= len(self.frames):
            return False, None
        self.start = time.monotonic() if self.start is None else self.start
        delay = self.start + self.next / self.fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = self.frames[self.next]
        self.next += 1
        return True, np.ascontiguousarray(frame[..., ::-1])

    def release(self) -> None:
        self.next = len(self.frames)


@pytest.fixture(scope="module")
def ckpt(make_checkpoint) -> Path:
    return make_checkpoint(CFG, seed=0, obj_score_bias=1.0)


def _predictor(ckpt: Path, tracker: str, **kw):
    common = dict(device="cpu", hydra_overrides_extra=OVERRIDES, apply_postprocessing=False)
    if tracker == "sam2":
        return build_sam2_video_predictor(CFG, ckpt, **common)
    return build_sam2long_video_predictor(CFG, ckpt, **common, **kw)


def _prompt(predictor, state) -> None:
    predictor.add_new_points_or_box(state, 0, 1, box=[150, 75, 325, 225])


def _collect(items) -> dict[int, dict[int, torch.Tensor]]:
    return {f: {o: m[i].clone() for i, o in enumerate(ids)} for f, ids, m in items}


def _stream() -> LiveStreamSource:
    return LiveStreamSource(str(VIDEO), drop="none", max_frames=NUM_FRAMES)


@pytest.mark.parametrize("tracker", ["sam2", "sam2long"])
def test_stream_output_equals_file_output(ckpt: Path, tracker: str) -> None:
    predictor = _predictor(ckpt, tracker)
    file_state = predictor.init_state(str(VIDEO))
    _prompt(predictor, file_state)
    from_file = _collect(predictor.propagate_in_video(file_state, max_frame_num_to_track=NUM_FRAMES - 1))

    source = _stream()
    state = predictor.init_state(source)
    _prompt(predictor, state)
    from_stream = _collect(predictor.propagate_in_video(state))
    source.close()
    assert sorted(from_stream) == sorted(from_file) == list(range(NUM_FRAMES))
    for f in from_file:
        assert torch.equal(from_stream[f][1], from_file[f][1]), f
    assert (from_file[NUM_FRAMES - 1][1] > 0).any()
    stats = source.stats
    assert stats.captured == stats.delivered == NUM_FRAMES and stats.dropped == 0 and stats.ended


def _lags(predictor) -> list[int]:
    """For each output frame: how many newer frames the tracker had read from the stream by then."""
    source = _stream()
    state = predictor.init_state(source)
    _prompt(predictor, state)
    lags = [source.stats.delivered - 1 - frame_idx for frame_idx, _, _ in predictor.propagate_in_video(state)]
    source.close()
    assert len(lags) == NUM_FRAMES
    return lags


def test_sam2long_output_lag_is_bounded_by_max_lag(ckpt: Path) -> None:
    """Uncertain frames (uncertainty=100) keep diverse pathways: the exact search decides late, max_lag
    bounds the delay; SAM 2 yields every frame as soon as it is read."""
    max_lag = 1
    exact = _lags(_predictor(ckpt, "sam2long", uncertainty=100.0))
    bounded = _lags(_predictor(ckpt, "sam2long", uncertainty=100.0, max_lag=max_lag))
    assert max(exact) > max_lag, "the test needs a delay to bound"
    assert max(bounded) <= max_lag
    assert _lags(_predictor(ckpt, "sam2")) == [0] * NUM_FRAMES


class GatedCapture:
    """An OpenCV-like capture that hands out a frame only once the test has released it: the test, not
    a clock, decides how far the stream runs ahead of the tracker."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames, self.next = frames, 0
        self._allowed = threading.Semaphore(0)

    def release_frames(self, count: int) -> None:
        for _ in range(count):
            self._allowed.release()

    def read(self):
        if self.next >= len(self.frames):
            return False, None
        self._allowed.acquire()
        frame = self.frames[self.next]
        self.next += 1
        return True, np.ascontiguousarray(frame[..., ::-1])

    def release(self) -> None:
        self.next = len(self.frames)
        self.release_frames(1)


def _wait_captured(source: LiveStreamSource, count: int) -> None:
    """Wait until the reader thread has queued ``count`` frames (and applied the drop policy)."""
    deadline = time.monotonic() + 30.0
    while source.stats.captured < count:
        assert time.monotonic() < deadline, f"the reader queued {source.stats.captured} of {count} frames"
        time.sleep(0.001)


def _take(source: LiveStreamSource, index: int, frames: list[np.ndarray]) -> int:
    frame = source.get(index)
    stream_index = source.stream_index(index)
    assert np.array_equal(frame, frames[stream_index]), index
    return stream_index


def test_slow_tracker_drops_the_oldest_frames_and_counts_them() -> None:
    """The stream runs up to 5 frames ahead of the tracker between its reads; with a queue of 2 the
    oldest waiting frames are dropped, exactly as a bounded deque would (the expected run is simulated)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(40)]
    capture = GatedCapture(frames)
    capture.release_frames(1)
    source = LiveStreamSource(0, drop="oldest", buffer=2, capture=capture)  # takes frame 0 to size itself
    queue: deque[int] = deque()
    expected_taken, expected_dropped, released, taken = [0], 0, 1, [_take(source, 0, frames)]
    while released < 40:
        burst = min(5, 40 - released)
        capture.release_frames(burst)
        for stream_index in range(released, released + burst):
            queue.append(stream_index)
            if len(queue) > 2:
                queue.popleft()
                expected_dropped += 1
        released += burst
        _wait_captured(source, released)
        expected_taken.append(queue.popleft())
        taken.append(_take(source, len(taken), frames))
    while source.has_frame(len(taken)):
        taken.append(_take(source, len(taken), frames))
    expected_taken.extend(queue)
    stats = source.stats
    source.close()
    assert taken == expected_taken and stats.dropped == expected_dropped > 0
    assert stats.ended and stats.captured == 40 and stats.waiting == 0
    assert stats.delivered + stats.dropped == stats.captured == 40
    assert len(set(range(40)) - set(taken)) == stats.dropped
    assert taken[-1] == 39, "the newest frame is never dropped"


def test_drop_none_hands_every_frame_over() -> None:
    """``drop="none"``: the reader waits for the tracker, whatever the stream has ready."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(40)]
    capture = GatedCapture(frames)
    capture.release_frames(40)
    source = LiveStreamSource(0, drop="none", buffer=2, capture=capture)
    taken = []
    while source.has_frame(len(taken)):
        stats = source.stats
        assert stats.waiting <= 2 and stats.captured <= stats.delivered + 2, "the reader waits for the tracker"
        taken.append(_take(source, len(taken), frames))
    stats = source.stats
    source.close()
    assert taken == list(range(40))
    assert (stats.captured, stats.delivered, stats.dropped, stats.ended) == (40, 40, 0, True)


def test_live_frames_are_read_once_in_order() -> None:
    frames = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(6)]
    source = LiveStreamSource(3, drop="none", keep=2, capture=PacedCapture(frames, fps=1000.0))
    assert source.size == (8, 8) and source.get(0)[0, 0, 0] == 0
    with pytest.raises(
        FrameSourceError, match=r"camera 3 is read in order: frame 4 asked, the next one is 1"
    ):
        source.get(4)
    for i in (1, 2):
        assert source.get(i)[0, 0, 0] == i
    with pytest.raises(FrameSourceError, match=r"frame 0 is no longer held .* last 2 frames; oldest held: 1"):
        source.get(0)
    source.close()


def test_object_prompted_mid_stream_joins_and_leaves_the_others_unchanged(ckpt: Path) -> None:
    predictor = _predictor(
        ckpt, "sam2long", batch_objects=False
    )  # bit-identical objects (see test_objects_join)
    box = [50, 30, 200, 150]

    def stream_run(join: bool):
        source = _stream()
        state = predictor.init_state(source)
        _prompt(predictor, state)

        def hook(frame_idx: int) -> None:
            if join and frame_idx == JOIN:
                predictor.add_new_points_or_box(state, frame_idx, 2, box=box)

        out = _collect(predictor.propagate_in_video(state, before_frame=hook))
        source.close()
        return out

    joined, without = stream_run(True), stream_run(False)
    file_state = predictor.init_state(str(VIDEO))
    _prompt(predictor, file_state)
    predictor.add_new_points_or_box(file_state, JOIN, 2, box=box)
    from_start = _collect(
        predictor.propagate_in_video(
            file_state, max_frame_num_to_track=NUM_FRAMES - 1, objects_join_at_first_prompt=True
        )
    )
    assert sorted(joined) == sorted(without) == sorted(from_start) == list(range(NUM_FRAMES))
    for f in range(NUM_FRAMES):
        assert torch.equal(joined[f][1], without[f][1]), f"object 1 changed on frame {f}"
        if f >= JOIN:
            assert torch.equal(joined[f][2], from_start[f][2]), f
        elif 2 in joined[f]:
            assert (joined[f][2] <= 0).all(), f
    assert (joined[NUM_FRAMES - 1][2] > 0).any()


def test_segment_command_on_a_stream_writes_as_it_goes(ckpt: Path, tmp_path: Path) -> None:
    """``sam2long segment FILE --live``: one pass, an object joining on frame 3, stream counts in the summary."""
    import json

    import av

    from sam2long.cli import main
    from sam2long.mask_io import read_mask

    out = tmp_path / "live"
    argv = ["segment", str(VIDEO), "--live", "--max_frames", "6", "--out", str(out)]
    argv += ["--frame", "0", "--obj", "1", "--box", "150,75,325,225", "--frame", "3", "--obj", "2"]
    argv += [
        "--point",
        "100,100",
        "--config",
        CFG,
        "--checkpoint",
        str(ckpt),
        "--hydra_overrides",
        *OVERRIDES,
    ]
    assert main([*argv, "--device", "cpu", "--num_pathways", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stream"] == {
        "source": str(VIDEO),
        "drop_policy": "none",
        "captured": 6,
        "tracked": 6,
        "dropped": 0,
        "max_lag": 8,
    }
    assert summary["trackers"]["sam2long"]["objects"] == [1, 2]
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    names = [f"{i:06d}" for i in range(6)]
    assert sorted(p.stem for p in (out / "masks" / "001").glob("*.png")) == names
    joined = sorted(p.stem for p in (out / "masks" / "002").glob("*.png"))
    assert joined[-3:] == names[3:], "object 2 is tracked from its prompted frame on"
    assert all(not read_mask(out / "masks" / "002" / f"{n}.png").any() for n in joined if n < names[3])


def test_segment_on_a_missing_camera_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sam2long.cli import main

    assert main(["segment", "7", "--point", "10,10", "--out", str(tmp_path / "o")]) == 2
    assert "camera 7" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs --out .* and/or --show"):
        main(["segment", "7", "--point", "10,10"])


def test_a_long_stream_keeps_a_bounded_session(ckpt: Path) -> None:
    """Tracked outputs memory attention can no longer read are dropped on a live stream: the session
    holds a fixed window of frames whatever the stream's length (store's own counts)."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(60)]
    predictor = _predictor(ckpt, "sam2")
    window = max(predictor.num_maskmem, predictor.max_obj_ptrs_in_encoder)
    source = LiveStreamSource(0, drop="none", capture=PacedCapture(frames, fps=1000.0))
    state = predictor.init_state(source)
    predictor.add_new_points_or_box(state, 0, 1, points=[[40, 30]], labels=[1])
    held = []
    for frame_idx, _, _ in predictor.propagate_in_video(state):
        outputs = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
        held.append(len(outputs))
        # dropped after each frame is done: frames older than `window` before the previous frame
        assert all(f >= frame_idx - 1 - window for f in outputs)
    source.close()
    stats = state["output_store"].stats
    assert len(held) == 60 and max(held) == window + 2, "frames f-1-window .. f"
    assert stats.ram_entries + stats.disk_entries == window + 1, "frames 59-window .. 59"
    assert sorted(state["frames_tracked_per_obj"][0]) == [0, *range(59 - window, 60)], "prompt + window"
