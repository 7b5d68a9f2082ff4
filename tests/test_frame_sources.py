"""Frame sources (folder / video file / in-memory) and video loading into model inputs."""

from __future__ import annotations

import shutil
import struct
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sam2.utils.frame_sources import (
    ArrayFrameSource,
    FrameSourceError,
    ImageFolderSource,
    TruncatedVideoError,
    VideoFileSource,
    open_frame_source,
    resize_to_model_input,
    sort_frame_names,
)
from sam2.utils.video_frames import PrefetchingVideoFrames, load_video_frames

ASSETS = Path(__file__).parent / "assets"
BEDROOM = ASSETS / "bedroom"
# 90 frames of H.264 High profile, 480x270, open GOP of 30 (keyframes 0, 30, 60), 3 B-frames
BEDROOM_H264 = ASSETS / "bedroom_h264.mp4"
NUM_FRAMES = 8
HEIGHT, WIDTH = 270, 480
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of a video, decoded by plain PyAV in one sequential pass (the reference)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _reference_model_input(path: Path, image_size: int) -> torch.Tensor:
    """Upstream SAM 2's JPEG-folder pipeline, spelled out: PIL RGB resize, /255, normalize."""
    pixels = np.array(Image.open(path).convert("RGB").resize((image_size, image_size)))
    unit = torch.from_numpy(pixels / 255.0).permute(2, 0, 1).float()
    return (unit - MEAN) / STD


@pytest.fixture(scope="module")
def bedroom_frames() -> list[np.ndarray]:
    return [np.array(Image.open(BEDROOM / f"{i:05d}.jpg").convert("RGB")) for i in range(NUM_FRAMES)]


@pytest.fixture(scope="module")
def h264_frames() -> list[np.ndarray]:
    return _decode_all(BEDROOM_H264)


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
        load_video_frames(
            str(tmp_path), 32, offload_video_to_cpu=True, compute_device="cpu", preload_frames=True
        )
    lazy, _, _ = load_video_frames(str(tmp_path), 32, offload_video_to_cpu=True, compute_device="cpu")
    with pytest.raises(FrameSourceError, match="00001.jpg"):
        lazy[1]


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
        str(BEDROOM), 64, offload_video_to_cpu=True, compute_device="cpu", preload_frames=True
    )
    lazy, _, _ = load_video_frames(str(BEDROOM), 64, offload_video_to_cpu=True, compute_device="cpu")
    assert (height, width) == (HEIGHT, WIDTH)
    assert images.shape == (NUM_FRAMES, 3, 64, 64) and images.dtype == torch.float32
    for index in range(NUM_FRAMES):
        expected = _reference_model_input(BEDROOM / f"{index:05d}.jpg", 64)
        assert torch.equal(images[index], expected)
        assert lazy[index].dtype == torch.float32 and torch.equal(lazy[index], expected)


def test_resize_to_model_input_range_and_layout() -> None:
    frame = np.zeros((10, 20, 3), np.uint8)
    frame[..., 0] = 255
    unit = resize_to_model_input(frame, 16)
    assert unit.shape == (3, 16, 16) and unit.dtype == torch.float32
    assert torch.all(unit[0] == 1.0) and torch.all(unit[1:] == 0.0)


def test_all_sources_and_loading_modes_give_the_same_inputs(bedroom_frames: list[np.ndarray]) -> None:
    reference, _, _ = load_video_frames(
        str(BEDROOM), 32, offload_video_to_cpu=False, compute_device="cpu", preload_frames=True
    )
    from_array, height, width = load_video_frames(
        np.stack(bedroom_frames), 32, offload_video_to_cpu=True, compute_device="cpu", preload_frames=True
    )
    assert (height, width) == (HEIGHT, WIDTH)
    assert torch.equal(from_array, reference)

    # the lazy default, upstream's async_loading_frames and the earlier stream_frames all load lazily
    for flags in ({}, {"async_loading_frames": True}, {"stream_frames": True}):
        lazy, height, width = load_video_frames(
            str(BEDROOM), 32, offload_video_to_cpu=True, compute_device="cpu", **flags
        )
        assert isinstance(lazy, PrefetchingVideoFrames)
        assert (height, width) == (HEIGHT, WIDTH) and len(lazy) == NUM_FRAMES
        for index in [*range(NUM_FRAMES), -1]:
            assert torch.equal(lazy[index], reference[index])
        with pytest.raises(IndexError):
            lazy[NUM_FRAMES]
        lazy.close()
    with pytest.raises(ValueError, match="preload_frames"):
        load_video_frames(
            str(BEDROOM), 32, False, compute_device="cpu", preload_frames=True, stream_frames=True
        )


def test_video_file_loads_like_its_frames(bedroom_mp4: Path) -> None:
    from_video, height, width = load_video_frames(
        str(bedroom_mp4), 32, offload_video_to_cpu=True, compute_device="cpu", preload_frames=True
    )
    from_folder, _, _ = load_video_frames(
        str(BEDROOM), 32, offload_video_to_cpu=True, compute_device="cpu", preload_frames=True
    )
    assert (height, width) == (HEIGHT, WIDTH)
    assert from_video.shape == from_folder.shape
    # codec noise only: normalized inputs stay close on average
    assert (from_video - from_folder).abs().mean() < 0.1


# --------------------------------------------------------------------------------------------
# Video files: frame-accurate PyAV decoding
# --------------------------------------------------------------------------------------------


def test_h264_asset_has_b_frames_and_several_keyframes() -> None:
    """The clip must exercise reordering and keyframe seeking, else the tests below prove little."""
    with av.open(str(BEDROOM_H264)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        packets = [packet for packet in container.demux(video=0) if packet.size]
    pts = [packet.pts for packet in packets]
    assert pts != sorted(pts)  # decode order differs from display order: B-frames
    keyframe_ranks = [sorted(pts).index(packet.pts) for packet in packets if packet.is_keyframe]
    assert keyframe_ranks == [0, 30, 60]


def test_video_source_counts_and_reads_frames_like_a_sequential_decode(h264_frames: list[np.ndarray]) -> None:
    source = VideoFileSource(BEDROOM_H264)
    assert len(source) == len(h264_frames) == 90
    assert source.frame_names[:2] == ["00000", "00001"] and source.frame_names[-1] == "00089"
    assert source.size == (HEIGHT, WIDTH) and source.kind == "video" and source.fps == 30.0
    for index, frame in enumerate(source):
        assert frame.dtype == np.uint8 and frame.shape == (HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(frame, h264_frames[index])
    # the frames are the bedroom video's, in RGB order (the first 8 are also stored as JPEG)
    assert np.abs(source.get(3).astype(int) - np.array(Image.open(BEDROOM / "00003.jpg"))).mean() < 6.0


def test_video_source_reverse_and_random_reads_equal_sequential_decode(h264_frames: list[np.ndarray]) -> None:
    source = VideoFileSource(BEDROOM_H264)
    decoded_before, seeks_before = source.frames_decoded, source.seeks
    for index in reversed(range(len(source))):
        np.testing.assert_array_equal(source.get(index), h264_frames[index])
    # one seek per group of pictures, each decoded about once (plus a few leading B-frames)
    assert source.seeks - seeks_before == 3
    assert source.frames_decoded - decoded_before <= len(source) + 10

    source.close()
    assert source.cached_frames == 0 and source.cached_bytes == 0
    for index in np.random.default_rng(0).permutation(len(source)).tolist():
        np.testing.assert_array_equal(source.get(index), h264_frames[index])
    np.testing.assert_array_equal(source.get(-1), h264_frames[-1])


def test_video_source_cache_respects_its_byte_budget(h264_frames: list[np.ndarray]) -> None:
    source = VideoFileSource(BEDROOM_H264)
    source.get(5)  # a jump: the decoder goes on from frame 1, and frames 1-5 are kept
    assert source.cached_frames == 5
    frame_bytes = source.cached_bytes // 5
    assert HEIGHT * WIDTH * 3 // 2 <= frame_bytes < HEIGHT * WIDTH * 2  # kept as YUV 4:2:0
    for index in range(6, 20):
        source.get(index)
    assert source.cached_frames == 5  # frames read in turn are not kept

    source = VideoFileSource(BEDROOM_H264, cache_bytes=12 * frame_bytes)
    for index in [*reversed(range(40)), 75, 31, 89, 2]:
        np.testing.assert_array_equal(source.get(index), h264_frames[index])
        assert source.cached_bytes <= 12 * frame_bytes and source.cached_frames <= 12
    assert source.cached_frames == 12


def test_video_source_is_thread_safe(h264_frames: list[np.ndarray]) -> None:
    source = VideoFileSource(BEDROOM_H264, cache_bytes=0)
    results: list[tuple[int, bool]] = []

    def read(order: list[int]) -> None:
        results.extend((i, np.array_equal(source.get(i), h264_frames[i])) for i in order)

    orders = [list(range(0, 90, 3)), list(range(89, 0, -4)), [45, 12, 80, 33, 61, 7]]
    threads = [threading.Thread(target=read, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(i for i, _ in results) == sorted(i for order in orders for i in order)
    assert all(equal for _, equal in results)


def test_frames_the_decoder_never_shows_are_not_indexed(
    tmp_path: Path, h264_frames: list[np.ndarray]
) -> None:
    # Cut the clip at its open-GOP keyframe (frame 30): the leading B-frame decoded after it
    # (frame 29) refers to the lost group of pictures, and FFmpeg does not output it.
    cut = tmp_path / "cut.mp4"
    with av.open(str(BEDROOM_H264)) as source_file, av.open(str(cut), "w") as output:
        stream = output.add_stream_from_template(source_file.streams.video[0])
        packets = [packet for packet in source_file.demux(video=0) if packet.size]
        for packet in packets[29:]:
            packet.stream = stream
            output.mux(packet)
    assert len(packets) - 29 == 61
    source = VideoFileSource(cut)
    assert len(source) == 60
    for index in [*reversed(range(60)), 0]:
        np.testing.assert_array_equal(source.get(index), h264_frames[30 + index])


class _LateSeekContainer:
    """A PyAV container whose seeks to the keyframe at pts ``early`` land at pts ``late``, as a
    sloppy demuxer might."""

    def __init__(self, container: Any, early: int, late: int) -> None:
        self._container, self._early, self._late = container, early, late

    def seek(self, offset: int, **kwargs: Any) -> None:
        self._container.seek(self._late if offset == self._early else offset, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def __enter__(self) -> _LateSeekContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()


def test_seek_that_overshoots_falls_back_to_an_earlier_keyframe(h264_frames: list[np.ndarray]) -> None:
    with av.open(str(BEDROOM_H264)) as container:
        stream = container.streams.video[0]
        pts = sorted(packet.pts for packet in container.demux(stream) if packet.size)

    class LateSeekSource(VideoFileSource):
        def _open_container(self) -> tuple[Any, Any]:
            container, stream = super()._open_container()
            return _LateSeekContainer(container, early=pts[30], late=pts[60]), stream

    source = LateSeekSource(BEDROOM_H264, cache_bytes=0)
    source.get(89)
    seeks = source.seeks
    np.testing.assert_array_equal(source.get(45), h264_frames[45])
    assert source.seeks == seeks + 2  # the seek to keyframe 30 landed at 60; restarted from frame 0


def _with_display_rotation(data: bytes, degrees: int) -> bytes:
    """An mp4's bytes with its video track's display matrix (``tkhd``) set to a counter-clockwise
    rotation by ``degrees``: how phones mark videos filmed in portrait."""
    at = data.index(b"tkhd") + 4
    assert data[at] == 0  # version 0 header: version/flags, 5 x 4 bytes, 8 reserved, 8 bytes
    at += 4 + 20 + 8 + 8
    cos, sin = round(np.cos(np.radians(degrees))), round(np.sin(np.radians(degrees)))
    matrix = struct.pack(">9i", cos << 16, -sin << 16, 0, sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    return data[:at] + matrix + data[at + 36 :]


@pytest.mark.parametrize("degrees", [90, 180, -90])
def test_rotated_video_comes_out_upright(tmp_path: Path, degrees: int) -> None:
    coded = np.zeros((4, 32, 64, 3), np.uint8)
    coded[:, :8, :8] = 255  # a white block in the top-left corner of the coded picture
    coded[:, 24:, 16:48, 0] = 200
    plain, rotated = tmp_path / "plain.mp4", tmp_path / "rotated.mp4"
    with av.open(str(plain), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for frame in coded:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    rotated.write_bytes(_with_display_rotation(plain.read_bytes(), degrees))

    upright = VideoFileSource(rotated)
    turns = degrees // 90 % 4
    assert upright.size == ((64, 32) if turns % 2 else (32, 64))
    as_coded = VideoFileSource(plain)
    assert as_coded.size == (32, 64)
    for index in (3, 0, 2):
        frame = upright.get(index)
        assert frame.shape[:2] == upright.size
        np.testing.assert_array_equal(frame, np.rot90(as_coded.get(index), turns))
    # FFmpeg's convention (its command-line autorotation gives the same pictures): +90 turns
    # the top-left corner to the bottom-left
    corner = {1: (slice(-8, None), slice(None, 8)), 2: (slice(-8, None), slice(-8, None))}
    corner[3] = (slice(None, 8), slice(-8, None))
    assert upright.get(0)[corner[turns]].mean() > 200


def test_variable_frame_rate_video_decodes_in_pts_order(tmp_path: Path) -> None:
    timestamps = [0, 1, 3, 4, 9, 10, 11, 20, 22, 23, 40, 41]  # irregular gaps, in 1/30 s
    levels = [16 + 18 * i for i in range(len(timestamps))]  # frame i is a flat grey of levels[i]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        stream.options = {"bf": "2", "g": "6", "x264-params": "keyint=6:min-keyint=6:scenecut=0"}
        for pts, level in zip(timestamps, levels):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        decode_order = [packet.pts for packet in container.demux(video=0) if packet.size]
    assert decode_order != sorted(decode_order)  # B-frames reorder this clip too

    source = VideoFileSource(path)
    assert len(source) == len(timestamps)
    assert source.frame_names == [f"{i:05d}" for i in range(len(timestamps))]
    for index in [*reversed(range(len(source))), 5, 0, 11, 6]:
        level = source.get(index).astype(float).mean()
        assert abs(level - levels[index]) < 3, (index, level)


def test_truncated_video_reads_its_complete_frames_and_names_the_last_one(
    tmp_path: Path, h264_frames: list[np.ndarray]
) -> None:
    # The asset is a "faststart" mp4 (index before the data), so cutting it keeps it openable but
    # loses the frames whose data was in the cut-off 40%.
    truncated = tmp_path / "cut.mp4"
    data = BEDROOM_H264.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(av.error.InvalidDataError), av.open(str(truncated)) as container:
        for _ in container.decode(video=0):  # what a naive decoder runs into
            pass

    with pytest.warns(UserWarning, match="cut.mp4 is truncated or damaged"):
        source = VideoFileSource(truncated)
    last = len(source) - 1
    assert 30 < last < 60
    for index in reversed(range(len(source))):
        np.testing.assert_array_equal(source.get(index), h264_frames[index])
    message = f"frame {last + 5} of video file .*cut.mp4.*last decodable frame is {last}"
    with pytest.raises(TruncatedVideoError, match=message) as raised:
        source.get(last + 5)
    assert isinstance(raised.value, FrameSourceError) and isinstance(raised.value, IndexError)

    # an mp4 whose index (moov) comes last loses it when cut: refused at open, naming the file
    index_last = tmp_path / "index_last.mp4"
    with av.open(str(BEDROOM_H264)) as source_file, av.open(str(index_last), "w") as output:
        stream = output.add_stream_from_template(source_file.streams.video[0])
        for packet in source_file.demux(video=0):
            if packet.size:
                packet.stream = stream
                output.mux(packet)
    data = index_last.read_bytes()
    assert data.index(b"moov") > data.index(b"mdat")
    index_last.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(FrameSourceError, match="cannot open video file .*index_last.mp4"):
        VideoFileSource(index_last)


def test_damaged_frame_raises_naming_file_and_frame_and_the_rest_still_reads(
    tmp_path: Path, h264_frames: list[np.ndarray]
) -> None:
    with av.open(str(BEDROOM_H264)) as container:
        packets = [packet for packet in container.demux(video=0) if packet.size]
    display_order = sorted(packet.pts for packet in packets)
    damaged = packets[40]  # a frame of the second group of pictures
    data = bytearray(BEDROOM_H264.read_bytes())
    data[damaged.pos : damaged.pos + damaged.size] = b"\xff" * damaged.size
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))

    source = VideoFileSource(path)
    assert len(source) == 90
    lost = display_order.index(damaged.pts)
    failures = []
    for index in reversed(range(90)):
        try:
            frame = source.get(index)
        except FrameSourceError as error:
            failures.append((index, str(error)))
            continue
        if index < 30:  # the first group of pictures does not depend on the damaged frame
            np.testing.assert_array_equal(frame, h264_frames[index])
    assert [index for index, _ in failures] == [lost]
    assert f"cannot decode frame {lost} of video file {path}" in failures[0][1]


# --------------------------------------------------------------------------------------------
# Lazy, prefetched model inputs
# --------------------------------------------------------------------------------------------


def test_lazy_video_frames_equal_preloaded_frames_bit_for_bit() -> None:
    preloaded, height, width = load_video_frames(
        str(BEDROOM_H264), 48, offload_video_to_cpu=True, compute_device="cpu", preload_frames=True
    )
    lazy, lazy_height, lazy_width = load_video_frames(
        str(BEDROOM_H264), 48, offload_video_to_cpu=True, compute_device="cpu"
    )
    assert preloaded.shape == (90, 3, 48, 48) and (height, width) == (lazy_height, lazy_width)
    assert len(lazy) == 90
    for index in [*range(0, 90, 7), *reversed(range(90)), 44, 3]:
        image = lazy[index]
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and image.device.type == "cpu"
        assert torch.equal(image, preloaded[index])
    lazy.close()


def test_prefetch_ring_stays_bounded_and_reads_ahead_in_the_playback_direction() -> None:
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    source = VideoFileSource(BEDROOM_H264)
    frames = PrefetchingVideoFrames(source, 32, True, mean, std, torch.device("cpu"), ring_size=6, prefetch=3)
    frame_bytes = 3 * 32 * 32 * 4

    for index in range(20):
        frames[index]
        assert frames.wait_for_prefetch()
        assert frames.cached_indices == list(range(max(index - 2, 0), index + 4))
        assert frames.cached_frames <= 6 and frames.cached_bytes == frames.cached_frames * frame_bytes
    assert frames.decoded_on_access == 1  # only frame 0: the others were prefetched before use
    assert frames.prefetched == {"forward": 22, "reverse": 0}

    frames[70]  # a jump forwards, then playback in reverse
    frames[69]
    assert frames.wait_for_prefetch()
    forward = frames.prefetched["forward"]
    for index in range(68, 40, -1):
        frames[index]
        assert frames.wait_for_prefetch()
        assert frames.cached_indices[:4] == list(range(index - 3, index + 1))
        assert frames.cached_frames <= 6
    assert frames.prefetched["forward"] == forward
    assert frames.prefetched["reverse"] == 3 + 28  # 66..68 after frame 69, then one per step
    assert frames.decoded_on_access == 3  # frames 0, 70 and 69
    frames.close()


def test_prefetch_errors_surface_on_the_next_access_with_their_message(tmp_path: Path) -> None:
    for index in range(4):
        shutil.copy(BEDROOM / f"{index:05d}.jpg", tmp_path / f"{index:05d}.jpg")
    (tmp_path / "00002.jpg").write_bytes(b"broken")
    frames, _, _ = load_video_frames(str(tmp_path), 32, offload_video_to_cpu=True, compute_device="cpu")
    frames[0]  # the background thread now prefetches 1, 2 (fails) ...
    assert frames.wait_for_prefetch()
    with pytest.raises(FrameSourceError, match=r"cannot read frame file .*00002\.jpg"):
        frames[0]
    assert frames[1].shape == (3, 32, 32)  # the error was reported once; other frames still load
    with pytest.raises(FrameSourceError, match=r"00002\.jpg"):
        frames[2]
    frames.close()


def test_prefetch_thread_is_a_daemon_that_stops_when_idle_or_closed() -> None:
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    source = ImageFolderSource(BEDROOM)
    frames = PrefetchingVideoFrames(source, 16, True, mean, std, torch.device("cpu"), idle_timeout=0.05)
    frames[0]
    worker = frames._worker
    assert worker is not None and worker.daemon
    worker.join(timeout=10)
    assert not worker.is_alive() and frames._worker is None  # exited on its own once idle
    frames[4]
    worker = frames._worker
    frames.close()
    assert worker is None or not worker.is_alive()
    assert frames.cached_frames == 0
