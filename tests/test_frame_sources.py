"""Frame sources (folder / video file / in-memory) and video loading into model inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sam2.utils.frame_sources import (
    ArrayFrameSource,
    FrameSourceError,
    ImageFolderSource,
    VideoFileSource,
    open_frame_source,
    resize_to_model_input,
    sort_frame_names,
)
from sam2.utils.misc import AsyncVideoFrameLoader, StreamingVideoFrames, load_video_frames

BEDROOM = Path(__file__).parent / "assets" / "bedroom"
NUM_FRAMES = 8
HEIGHT, WIDTH = 270, 480
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _reference_model_input(path: Path, image_size: int) -> torch.Tensor:
    """Upstream SAM 2's JPEG-folder pipeline, spelled out: PIL RGB resize, /255, normalize."""
    pixels = np.array(Image.open(path).convert("RGB").resize((image_size, image_size)))
    unit = torch.from_numpy(pixels / 255.0).permute(2, 0, 1).float()
    return (unit - MEAN) / STD


@pytest.fixture(scope="module")
def bedroom_frames() -> list[np.ndarray]:
    return [np.array(Image.open(BEDROOM / f"{i:05d}.jpg").convert("RGB")) for i in range(NUM_FRAMES)]


@pytest.fixture(scope="module")
def bedroom_mp4(tmp_path_factory: pytest.TempPathFactory, bedroom_frames: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("video") / "bedroom.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for frame in bedroom_frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_sort_numeric_names_numerically_and_others_naturally() -> None:
    assert sort_frame_names(["10.jpg", "9.jpg", "100.jpg", "0.jpg"]) == [
        "0.jpg",
        "9.jpg",
        "10.jpg",
        "100.jpg",
    ]
    names = ["frame10.png", "frame9.png", "Frame1.png", "frame100.png"]
    assert sort_frame_names(names) == ["Frame1.png", "frame9.png", "frame10.png", "frame100.png"]


def test_folder_source_reads_bedroom_in_order(bedroom_frames: list[np.ndarray]) -> None:
    source = ImageFolderSource(BEDROOM)
    assert len(source) == NUM_FRAMES
    assert source.frame_names == [f"{i:05d}" for i in range(NUM_FRAMES)]
    assert source.size == (HEIGHT, WIDTH)
    frame = source.get(3)
    assert frame.dtype == np.uint8 and frame.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(frame, bedroom_frames[3])
    np.testing.assert_array_equal(source.get(-1), bedroom_frames[-1])
    with pytest.raises(IndexError):
        source.get(NUM_FRAMES)


def test_folder_source_mixes_png_and_jpeg_and_ignores_other_files(tmp_path: Path) -> None:
    shutil.copy(BEDROOM / "00001.jpg", tmp_path / "2.JPG")
    Image.open(BEDROOM / "00000.jpg").save(tmp_path / "10.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "7.jpg").mkdir()
    source = ImageFolderSource(tmp_path)
    assert source.frame_names == ["2", "10"]
    # PNG is lossless, so it decodes to exactly the JPEG's pixels it was saved from
    np.testing.assert_array_equal(source.get(1), np.array(Image.open(BEDROOM / "00000.jpg")))


def test_folder_source_errors_name_the_culprit(tmp_path: Path) -> None:
    with pytest.raises(FrameSourceError, match="no JPEG or PNG frames found in .*" + tmp_path.name):
        ImageFolderSource(tmp_path)

    shutil.copy(BEDROOM / "00000.jpg", tmp_path / "00000.jpg")
    (tmp_path / "00001.jpg").write_bytes(b"definitely not a jpeg")
    Image.new("RGB", (64, 48)).save(tmp_path / "00002.jpg")
    source = ImageFolderSource(tmp_path)
    with pytest.raises(FrameSourceError, match="00001.jpg"):
        source.get(1)
    with pytest.raises(FrameSourceError, match=r"00002\.jpg has size 48x64"):
        source.get(2)
    with pytest.raises(FrameSourceError, match="00001.jpg"):
        load_video_frames(str(tmp_path), 32, offload_video_to_cpu=True, compute_device="cpu")


def test_video_file_source_decodes_all_frames_with_random_access(
    bedroom_mp4: Path, bedroom_frames: list[np.ndarray]
) -> None:
    source = VideoFileSource(bedroom_mp4)
    assert len(source) == NUM_FRAMES
    assert source.size == (HEIGHT, WIDTH)
    sequential = list(source)
    for decoded, original in zip(sequential, bedroom_frames):
        assert decoded.dtype == np.uint8 and decoded.shape == (HEIGHT, WIDTH, 3)
        # lossy codec, but the right frame, in RGB order: small error, far below frame-to-frame change
        assert np.abs(decoded.astype(int) - original).mean() < 6.0
    for index in (5, 2, 7, 0, 6):
        np.testing.assert_array_equal(source.get(index), sequential[index])
    source.close()
    np.testing.assert_array_equal(source.get(4), sequential[4])


def test_video_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FrameSourceError, match="missing.mp4"):
        VideoFileSource(tmp_path / "missing.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 128)
    with pytest.raises(FrameSourceError, match="broken.mp4"):
        VideoFileSource(broken)


def test_array_source_accepts_arrays_tensors_and_pil(bedroom_frames: list[np.ndarray]) -> None:
    stacked = np.stack(bedroom_frames[:3])
    for frames in (stacked, torch.from_numpy(stacked), [Image.fromarray(f) for f in bedroom_frames[:3]]):
        source = ArrayFrameSource(frames)
        assert len(source) == 3 and source.size == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(source.get(2), bedroom_frames[2])


def test_array_source_errors() -> None:
    with pytest.raises(FrameSourceError, match="empty"):
        ArrayFrameSource([])
    with pytest.raises(FrameSourceError, match="frame 1 has size 8x8"):
        ArrayFrameSource([np.zeros((4, 6, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(FrameSourceError, match="dtype float32"):
        ArrayFrameSource(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(FrameSourceError, match="frame 0 has shape"):
        ArrayFrameSource([np.zeros((4, 4), np.uint8)])


def test_open_frame_source_dispatches_on_input_type(bedroom_mp4: Path, tmp_path: Path) -> None:
    assert isinstance(open_frame_source(str(BEDROOM)), ImageFolderSource)
    assert isinstance(open_frame_source(BEDROOM), ImageFolderSource)
    assert isinstance(open_frame_source(str(bedroom_mp4)), VideoFileSource)
    array_source = open_frame_source(np.zeros((2, 4, 4, 3), np.uint8))
    assert isinstance(array_source, ArrayFrameSource)
    assert open_frame_source(array_source) is array_source
    with pytest.raises(FrameSourceError, match="nowhere"):
        open_frame_source(str(tmp_path / "nowhere"))
    with pytest.raises(TypeError):
        open_frame_source(42)


def test_model_input_matches_upstream_jpeg_pipeline_exactly() -> None:
    images, height, width = load_video_frames(
        str(BEDROOM), 64, offload_video_to_cpu=True, compute_device="cpu"
    )
    assert (height, width) == (HEIGHT, WIDTH)
    assert images.shape == (NUM_FRAMES, 3, 64, 64) and images.dtype == torch.float32
    for index in range(NUM_FRAMES):
        expected = _reference_model_input(BEDROOM / f"{index:05d}.jpg", 64)
        assert torch.equal(images[index], expected)


def test_resize_to_model_input_range_and_layout() -> None:
    frame = np.zeros((10, 20, 3), np.uint8)
    frame[..., 0] = 255
    unit = resize_to_model_input(frame, 16)
    assert unit.shape == (3, 16, 16) and unit.dtype == torch.float32
    assert torch.all(unit[0] == 1.0) and torch.all(unit[1:] == 0.0)


def test_all_sources_and_async_loading_give_the_same_inputs(bedroom_frames: list[np.ndarray]) -> None:
    reference, _, _ = load_video_frames(str(BEDROOM), 32, offload_video_to_cpu=False, compute_device="cpu")
    from_array, height, width = load_video_frames(
        np.stack(bedroom_frames), 32, offload_video_to_cpu=True, compute_device="cpu"
    )
    assert (height, width) == (HEIGHT, WIDTH)
    assert torch.equal(from_array, reference)

    lazy, height, width = load_video_frames(
        str(BEDROOM), 32, offload_video_to_cpu=True, async_loading_frames=True, compute_device="cpu"
    )
    assert isinstance(lazy, AsyncVideoFrameLoader)
    assert (height, width) == (HEIGHT, WIDTH) and len(lazy) == NUM_FRAMES
    lazy.thread.join(timeout=30)
    assert lazy.exception is None
    for index in range(NUM_FRAMES):
        assert torch.equal(lazy[index], reference[index])


def test_async_loader_reports_failures_of_its_thread(tmp_path: Path) -> None:
    shutil.copy(BEDROOM / "00000.jpg", tmp_path / "00000.jpg")
    (tmp_path / "00001.jpg").write_bytes(b"broken")
    lazy, _, _ = load_video_frames(
        str(tmp_path), 32, offload_video_to_cpu=True, async_loading_frames=True, compute_device="cpu"
    )
    lazy.thread.join(timeout=30)
    assert isinstance(lazy.exception, FrameSourceError)
    with pytest.raises(RuntimeError, match="frame loading thread"):
        lazy[0]


def test_video_file_loads_like_its_frames(bedroom_mp4: Path) -> None:
    from_video, height, width = load_video_frames(
        str(bedroom_mp4), 32, offload_video_to_cpu=True, compute_device="cpu"
    )
    from_folder, _, _ = load_video_frames(str(BEDROOM), 32, offload_video_to_cpu=True, compute_device="cpu")
    assert (height, width) == (HEIGHT, WIDTH)
    assert from_video.shape == from_folder.shape
    # codec noise only: normalized inputs stay close on average
    assert (from_video - from_folder).abs().mean() < 0.1


def test_streamed_frames_equal_loaded_frames_and_keep_a_bounded_cache(bedroom_frames: list[np.ndarray]) -> None:
    loaded, h, w = load_video_frames(np.stack(bedroom_frames), 64, offload_video_to_cpu=True, compute_device="cpu")
    streamed, h2, w2 = load_video_frames(
        np.stack(bedroom_frames), 64, offload_video_to_cpu=True, compute_device="cpu", stream_frames=True
    )
    assert isinstance(streamed, StreamingVideoFrames) and (h, w) == (h2, w2)
    assert len(streamed) == len(loaded)
    for i in list(range(len(loaded))) + [0, 3]:  # revisiting evicted frames decodes them again
        assert torch.equal(streamed[i], loaded[i])
        assert len(streamed._cache) <= streamed.cache_size
