"""Tests of :mod:`sam2long.export`: overlay and side-by-side mp4s, mask PNGs, COCO RLE, run summary."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from sam2long import export
from sam2long.export import (
    CocoRleWriter,
    OverlayVideoWriter,
    PalettePngWriter,
    PerObjectPngWriter,
    SideBySideWriter,
    draw_overlay,
    object_colour,
    write_summary,
)
from sam2long.mask_io import DAVIS_PALETTE, read_mask, read_mask_with_palette

HEIGHT, WIDTH = 270, 480
CODEC_TOLERANCE = 3.0  # mean absolute error of a CRF-18 H.264 round trip, in 8-bit levels


@pytest.fixture(scope="module")
def frames(bedroom_dir: Path) -> list[np.ndarray]:
    """Four real RGB frames, 270 x 480."""
    paths = sorted(bedroom_dir.glob("*.jpg"))[:4]
    images = [np.array(Image.open(path).convert("RGB")) for path in paths]
    assert all(image.shape == (HEIGHT, WIDTH, 3) for image in images)
    return images


def two_masks(height: int = HEIGHT, width: int = WIDTH, shift: int = 0) -> dict[int, np.ndarray]:
    """Object 1: a rectangle; object 2: a disc; ``shift`` moves both right (a moving scene)."""
    rect = np.zeros((height, width), dtype=bool)
    rect[60:160, 40 + shift : 200 + shift] = True
    disc = np.zeros((height, width), dtype=np.uint8)
    cv2.circle(disc, (330 + shift, 170), 70, 1, thickness=cv2.FILLED)
    return {1: rect, 2: disc.astype(bool)}


def decode(path: Path) -> tuple[dict, list[np.ndarray]]:
    """The video stream's codec, pixel format, frame count, rate, size and colour tags (matrix,
    range), and its frames as RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "frames": stream.frames,
            "rate": stream.average_rate,
            "size": (stream.height, stream.width),
            "colour": (stream.codec_context.colorspace, stream.codec_context.color_range),
        }
        images = [bt709_to_rgb(frame) for frame in container.decode(stream)]
    return info, images


def bt709_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """RGB of a decoded yuv420p frame by the BT.709 limited-range matrix the writers tag, computed
    here so that the checks do not depend on the conversion of the installed PyAV."""
    height, width = frame.height, frame.width
    planes = frame.to_ndarray().reshape(-1).astype(np.float64)
    luma = planes[: height * width].reshape(height, width)
    chroma = planes[height * width :].reshape(2, height // 2, width // 2)
    cb, cr = (cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in chroma)
    y, cb, cr = (luma - 16) * 255 / 219, (cb - 128) * 255 / 224, (cr - 128) * 255 / 224
    rgb = np.stack([y + 1.5748 * cr, y - 0.1873 * cb - 0.4681 * cr, y + 1.8556 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def top_level_boxes(path: Path) -> list[str]:
    """The types of an mp4's top-level boxes, in file order."""
    data, boxes, offset = path.read_bytes(), [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        boxes.append(data[offset + 4 : offset + 8].decode("latin-1"))
        if size == 1:  # 64-bit size
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        offset += size if size else len(data)
    return boxes


def mad(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean absolute difference of two images, optionally over the pixels ``where``."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff[where].mean() if where is not None else diff.mean())


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def blend(frame: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The fill the overlay promises: half frame, half object colour."""
    return np.rint(0.5 * frame.astype(np.float64) + 0.5 * np.array(colour)).astype(np.uint8)


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --------------------------------------------------------------------------- colours and drawing


def test_object_colours_are_the_palette_pngs_colours():
    palette = np.frombuffer(DAVIS_PALETTE, dtype=np.uint8).reshape(256, 3)
    for obj_id in (1, 2, 3, 17, 255):
        assert object_colour(obj_id) == tuple(palette[obj_id])
    assert object_colour(256) == object_colour(1)  # larger ids cycle through 1..255
    assert object_colour(0) == tuple(palette[255])
    assert len({object_colour(i) for i in range(1, 256)}) == 255
    assert (0, 0, 0) not in {object_colour(i) for i in range(-300, 600)}


def test_overlay_fills_outlines_and_labels_only_the_objects(frames):
    frame, masks = frames[0], two_masks()
    union = masks[1] | masks[2]

    plain = draw_overlay(frame, masks, labels=False, contours=False)
    assert np.array_equal(plain[~union], frame[~union])
    for obj_id, mask in masks.items():
        assert np.array_equal(plain[mask], blend(frame, object_colour(obj_id))[mask])

    outlined = draw_overlay(frame, masks, labels=False)
    assert np.array_equal(outlined[~union], frame[~union])  # the contour lies inside the mask
    for obj_id, mask in masks.items():
        edge = mask & ~erode(mask, 1)
        assert (outlined[edge] == object_colour(obj_id)).all()
        inner = erode(mask, 12)
        assert np.array_equal(outlined[inner], plain[inner])

    labelled = draw_overlay(frame, masks)
    changed = (labelled != frame).any(axis=2) & ~union
    assert changed.any()
    ys, xs = np.nonzero(changed)
    # the labels sit just above each object's top-left corner: rectangle at (40, 60), disc at (260, 100)
    near_rect = (np.abs(xs - 40) < 40) & (ys < 60) & (ys > 20)
    near_disc = (np.abs(xs - 260) < 40) & (ys < 100) & (ys > 60)
    assert (near_rect | near_disc).all() and near_rect.any() and near_disc.any()
    assert np.array_equal(frame, frames[0])  # the input is not modified


def test_overlay_rejects_bad_frames_and_masks(frames):
    frame = frames[0]
    with pytest.raises(ValueError, match="RGB uint8"):
        draw_overlay(frame.astype(np.float32), {})
    with pytest.raises(ValueError, match="object 3 has shape"):
        draw_overlay(frame, {3: np.zeros((10, 10), bool)})
    with pytest.raises(ValueError, match="logits > 0"):
        draw_overlay(frame, {1: np.zeros((HEIGHT, WIDTH), np.float32)})
    with pytest.raises(ValueError, match="integers"):
        draw_overlay(frame, {"a": np.zeros((HEIGHT, WIDTH), bool)})
    leading_axis = {1: two_masks()[1][None]}  # (1, H, W), as predictors yield them
    assert np.array_equal(draw_overlay(frame, leading_axis), draw_overlay(frame, {1: two_masks()[1]}))


# --------------------------------------------------------------------------- overlay video


def test_overlay_video_is_browser_h264_with_the_input_rate_size_and_tints(tmp_path: Path, frames):
    path = tmp_path / "overlay.mp4"
    scenes = [(frame, two_masks(shift=10 * i)) for i, frame in enumerate(frames)]
    with OverlayVideoWriter(path, 24, (HEIGHT, WIDTH)) as writer:
        assert writer.codec_name == "libx264"
        for frame, masks in scenes:
            writer.write(frame, masks)
        assert not path.exists()  # only the temporary file exists until close()
    assert leftovers(tmp_path) == ["overlay.mp4"]

    info, decoded = decode(path)
    assert info == {
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "frames": len(frames),
        "rate": Fraction(24),
        "size": (HEIGHT, WIDTH),
        "colour": (1, 1),  # tagged BT.709, limited range
    }
    assert len(decoded) == len(frames)
    boxes = top_level_boxes(path)  # the index comes first, so browsers start playing at once
    assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat")
    for (frame, masks), got in zip(scenes, decoded):
        assert mad(got, draw_overlay(frame, masks)) < CODEC_TOLERANCE
        expected = draw_overlay(frame, masks)
        background = ~dilate((expected != frame).any(axis=2), 3)
        assert mad(got, frame, background) < CODEC_TOLERANCE
        for obj_id, mask in masks.items():
            inner = erode(mask, 8)  # away from the contour
            tinted = blend(frame, object_colour(obj_id))
            assert mad(tinted, frame, inner) > 20  # the tint is a visible change ...
            assert mad(got, tinted, inner) < CODEC_TOLERANCE  # ... and the video shows it
            shift = got[inner].astype(float).mean(0) - frame[inner].astype(float).mean(0)
            toward = np.array(object_colour(obj_id)) - frame[inner].astype(float).mean(0)
            assert np.all(np.sign(shift) == np.sign(toward))


def test_fractional_rates_are_kept(tmp_path: Path, frames):
    path = tmp_path / "ntsc.mp4"
    with OverlayVideoWriter(path, 30000 / 1001, (HEIGHT, WIDTH), labels=False) as writer:
        for frame in frames[:2]:
            writer.write(frame, {})
    info, decoded = decode(path)
    assert info["rate"] == Fraction(30000, 1001)
    assert len(decoded) == 2 and mad(decoded[0], frames[0]) < CODEC_TOLERANCE


def test_odd_sizes_are_padded_by_one_pixel(tmp_path: Path, frames):
    height, width = HEIGHT - 1, WIDTH - 1
    path = tmp_path / "odd.mp4"
    cropped = [np.ascontiguousarray(frame[:height, :width]) for frame in frames[:3]]
    masks = two_masks(height, width)
    with OverlayVideoWriter(path, 10, (height, width)) as writer:
        assert writer.encoded_size == (HEIGHT, WIDTH)
        for frame in cropped:
            writer.write(frame, masks)
    info, decoded = decode(path)
    assert info["size"] == (HEIGHT, WIDTH) and info["frames"] == 3 and info["rate"] == 10
    for frame, got in zip(cropped, decoded):
        expected = draw_overlay(frame, masks)
        assert mad(got[:height, :width], expected) < CODEC_TOLERANCE
        # the padding row and column repeat the last ones
        assert mad(got[height, :width], expected[height - 1]) < 2 * CODEC_TOLERANCE
        assert mad(got[:height, width], expected[:, width - 1]) < 2 * CODEC_TOLERANCE


def test_an_error_inside_the_writer_leaves_no_file(tmp_path: Path, frames):
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with OverlayVideoWriter(path, 24, (HEIGHT, WIDTH)) as writer:
            writer.write(frames[0], two_masks())
            assert leftovers(tmp_path) != []  # the temporary file, being written
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []

    with pytest.raises(ValueError, match="expected an RGB uint8 frame of shape"):
        with OverlayVideoWriter(path, 24, (HEIGHT, WIDTH)) as writer:
            writer.write(frames[0][:100], two_masks())
    assert leftovers(tmp_path) == []


def test_video_writers_reject_bad_options(tmp_path: Path, frames):
    with pytest.raises(ValueError, match=r"must end in \.mp4"):
        OverlayVideoWriter(tmp_path / "out.avi", 24, (HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="fps"):
        OverlayVideoWriter(tmp_path / "out.mp4", 0, (HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="size"):
        OverlayVideoWriter(tmp_path / "out.mp4", 24, (HEIGHT,))
    with pytest.raises(ValueError, match="gap"):
        SideBySideWriter(tmp_path / "out.mp4", 24, (HEIGHT, WIDTH), gap=-1)
    writer = OverlayVideoWriter(tmp_path / "empty.mp4", 24, (HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="no frames"):
        writer.close()
    assert leftovers(tmp_path) == []


def test_without_h264_another_encoder_still_writes_an_mp4(tmp_path: Path, frames, monkeypatch):
    monkeypatch.setattr(export, "VIDEO_ENCODERS", ("no-such-encoder", "mpeg4"))
    path = tmp_path / "fallback.mp4"
    with pytest.warns(RuntimeWarning, match="no H.264 encoder"):
        writer = OverlayVideoWriter(path, 24, (HEIGHT, WIDTH))
    with writer:
        writer.write(frames[0], two_masks())
    assert writer.codec_name == "mpeg4"
    info, decoded = decode(path)
    assert info["codec"] == "mpeg4" and len(decoded) == 1


# --------------------------------------------------------------------------- side by side


def test_side_by_side_shows_both_overlays_with_titles_and_a_gap(tmp_path: Path, frames):
    path = tmp_path / "compare.mp4"
    left, right = {1: two_masks()[1]}, two_masks()
    with SideBySideWriter(path, 12, (HEIGHT, WIDTH)) as writer:
        assert writer.gap == 8 and writer.encoded_size == (HEIGHT, 2 * WIDTH + 8)
        for idx, frame in enumerate(frames[:2]):
            writer.write(frame, left, right, idx)
    info, decoded = decode(path)
    assert info["size"] == (HEIGHT, 2 * WIDTH + 8) and info["frames"] == 2 and info["rate"] == 12

    frame, got = frames[0], decoded[0]
    got_left, gap, got_right = got[:, :WIDTH], got[:, WIDTH : WIDTH + 8], got[:, WIDTH + 8 :]
    assert mad(gap[:, 2:-2], np.full_like(gap[:, 2:-2], 32)) < CODEC_TOLERANCE
    body = np.zeros((HEIGHT, WIDTH), bool)
    body[40:, :] = True  # below the title bar
    assert mad(got_left, draw_overlay(frame, left), body) < CODEC_TOLERANCE
    assert mad(got_right, draw_overlay(frame, right), body) < CODEC_TOLERANCE
    disc = erode(right[2], 8)  # object 2 is only on the right
    assert mad(got_left, frame, disc) < CODEC_TOLERANCE
    assert mad(got_right, blend(frame, object_colour(2)), disc) < CODEC_TOLERANCE

    # titles top-left, frame counters top-right: dark boxes with text where the overlay has none
    for half in (got_left, got_right):
        for corner in (half[:20, :60], half[:20, -60:]):
            assert (corner.astype(int).sum(axis=2) < 60).mean() > 0.5  # mostly the black box
            assert (corner.min(axis=2) > 150).any()  # white letters on it
    assert mad(decoded[0][:20, WIDTH - 70 :], decoded[1][:20, WIDTH - 70 :]) > 1  # "frame 0" -> "frame 1"


# --------------------------------------------------------------------------- mask PNGs


def test_palette_pngs_hold_object_ids_as_labels(tmp_path: Path):
    masks = two_masks()
    masks[7] = np.zeros((HEIGHT, WIDTH), bool)
    masks[7][100:120, 100:300] = True  # overlaps object 1: the smaller id wins
    writer = PalettePngWriter(tmp_path / "masks")
    path = writer.write("00000", masks)
    assert path == tmp_path / "masks" / "00000.png"
    labels, palette = read_mask_with_palette(path)
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    for obj_id in (7, 2, 1):
        expected[masks[obj_id]] = obj_id
    assert np.array_equal(labels, expected)
    assert bytes(palette[:24]) == DAVIS_PALETTE[:24]
    writer.write("00001", {})  # size known from the first frame: an empty frame is all background
    assert not read_mask(tmp_path / "masks" / "00001.png").any()


def test_palette_png_ids_must_fit_8_bits(tmp_path: Path):
    mask = two_masks()[1]
    with pytest.raises(ValueError, match=r"object id 256 .*per-object PNGs"):
        PalettePngWriter(tmp_path).write("00000", {1: mask, 256: mask})
    with pytest.raises(ValueError, match="object id 0"):
        PalettePngWriter(tmp_path).write("00000", {0: mask})
    with pytest.raises(ValueError, match="no objects"):
        PalettePngWriter(tmp_path).write("00000", {})
    with pytest.raises(ValueError, match="plain file name"):
        PalettePngWriter(tmp_path).write("../00000", {1: mask})
    assert leftovers(tmp_path) == []


def test_per_object_pngs_are_one_binary_png_per_object(tmp_path: Path):
    masks = {**two_masks(), 1000: two_masks()[1]}
    paths = PerObjectPngWriter(tmp_path).write("00003", masks)
    assert paths == [tmp_path / f"{obj_id:03d}" / "00003.png" for obj_id in (1, 2, 1000)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001", "002", "1000"]
    for obj_id, path in zip((1, 2, 1000), paths):
        labels, palette = read_mask_with_palette(path)
        assert set(np.unique(labels)) == {0, 1}
        assert np.array_equal(labels == 1, masks[obj_id])
        assert bytes(palette[:6]) == DAVIS_PALETTE[:6]
    with pytest.raises(ValueError, match="negative"):
        PerObjectPngWriter(tmp_path).write("00004", {-1: masks[1]})


# --------------------------------------------------------------------------- COCO RLE


def test_coco_rle_json_decodes_to_the_masks(tmp_path: Path):
    path = tmp_path / "masks_rle.json"
    per_frame = {idx: two_masks(shift=15 * idx) for idx in range(3)}
    per_frame[2][2] = np.zeros((HEIGHT, WIDTH), bool)  # object 2 vanishes
    with CocoRleWriter(path, HEIGHT, WIDTH) as writer:
        for idx in (2, 0, 1):  # out of order, as a reverse pass yields them
            writer.write(idx, f"{idx:05d}", per_frame[idx])
        writer.write(0, "00000", per_frame[0])  # a frame written again replaces the first one
        assert not path.exists()
    payload = json.loads(path.read_text())
    assert payload["height"] == HEIGHT and payload["width"] == WIDTH
    assert [frame["frame_idx"] for frame in payload["frames"]] == [0, 1, 2]
    for frame in payload["frames"]:
        masks = per_frame[frame["frame_idx"]]
        assert frame["frame_name"] == f"{frame['frame_idx']:05d}"
        assert [obj["obj_id"] for obj in frame["objects"]] == [1, 2]
        for obj in frame["objects"]:
            assert obj["rle"]["size"] == [HEIGHT, WIDTH] and isinstance(obj["rle"]["counts"], str)
            rle = {"size": obj["rle"]["size"], "counts": obj["rle"]["counts"].encode("ascii")}
            decoded = mask_utils.decode(rle)
            assert np.array_equal(decoded.astype(bool), masks[obj["obj_id"]])
            assert obj["area"] == int(mask_utils.area(rle)) == int(masks[obj["obj_id"]].sum())
            assert obj["bbox"] == mask_utils.toBbox(rle).tolist()
    vanished = payload["frames"][2]["objects"][1]
    assert vanished["area"] == 0 and vanished["bbox"] == [0.0, 0.0, 0.0, 0.0]
    rect = payload["frames"][0]["objects"][0]
    assert rect["bbox"] == [40.0, 60.0, 160.0, 100.0]


def test_coco_rle_writes_nothing_on_error_or_bad_masks(tmp_path: Path):
    path = tmp_path / "masks_rle.json"
    with pytest.raises(ValueError, match="object 1 has shape"):
        with CocoRleWriter(path, HEIGHT, WIDTH) as writer:
            writer.write(0, "00000", two_masks())
            writer.write(1, "00001", {1: np.zeros((10, 10), bool)})
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="frame_idx"):
        CocoRleWriter(path, HEIGHT, WIDTH).write(-1, "x", {})


# --------------------------------------------------------------------------- summary


def test_summary_is_written_atomically_and_rejects_non_json_values(tmp_path: Path):
    path = tmp_path / "summary.json"
    write_summary(path, frames=8, fps=24.0, device="cpu", tree={"num_pathways": 3})
    assert json.loads(path.read_text()) == {
        "frames": 8,
        "fps": 24.0,
        "device": "cpu",
        "tree": {"num_pathways": 3},
    }
    with pytest.raises(TypeError, match="'model'"):
        write_summary(tmp_path / "other.json", model=Path("checkpoints/x.pt"))
    assert leftovers(tmp_path) == ["summary.json"]
