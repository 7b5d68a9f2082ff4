"""Tests of :mod:`sam2long.mask_io`: the one mask-reading rule, PNG writing, atomic writes, palette."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2long import mask_io
from sam2long.mask_io import (
    DAVIS_PALETTE,
    MaskError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    encode_png,
    merge_objects,
    read_mask,
    read_mask_with_palette,
    remove_temp_files,
    split_objects,
    write_png,
)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{mask_io.TEMP_PREFIX}*") if p.is_file()]


def labels_3x4() -> np.ndarray:
    return np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 7, 7]], dtype=np.uint8)


# --------------------------------------------------------------------------- palette


def test_palette_is_the_davis_one():
    palette = np.frombuffer(DAVIS_PALETTE, dtype=np.uint8).reshape(256, 3)
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[3].tolist() == [128, 128, 0]
    assert palette[4].tolist() == [0, 0, 128]
    assert palette[8].tolist() == [64, 0, 0]
    assert palette[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in palette.tolist()}) == 256  # a bijection: labels stay distinguishable


# --------------------------------------------------------------------------- the reading rule


def test_palette_png_gives_indices_and_its_palette(tmp_path: Path):
    image = Image.fromarray(labels_3x4())
    image.putpalette(DAVIS_PALETTE)
    image.save(tmp_path / "p.png")
    labels, palette = read_mask_with_palette(tmp_path / "p.png")
    assert labels.dtype == np.uint8 and np.array_equal(labels, labels_3x4())
    assert bytes(palette) == DAVIS_PALETTE
    assert np.array_equal(read_mask(tmp_path / "p.png"), labels_3x4())


def test_grayscale_8_and_16_bit_keep_their_values(tmp_path: Path):
    Image.fromarray(labels_3x4() * 30).save(tmp_path / "l.png")
    labels, palette = read_mask_with_palette(tmp_path / "l.png")
    assert labels.dtype == np.uint8 and np.array_equal(labels, labels_3x4() * 30) and palette is None

    wide = np.array([[0, 1, 300], [65535, 256, 2]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "i16.png")
    labels = read_mask(tmp_path / "i16.png")
    assert labels.dtype == np.uint16 and np.array_equal(labels, wide)  # 300, 256 not wrapped to 44, 0


def test_grey_rgb_and_rgba_are_accepted_alpha_ignored(tmp_path: Path):
    grey = labels_3x4() * 20
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), grey)
    alpha = np.full_like(grey, 255)
    alpha[0, 0] = 0
    Image.fromarray(np.stack([grey, grey, grey, alpha], axis=-1)).save(tmp_path / "rgba.png")
    labels = read_mask(tmp_path / "rgba.png")
    assert labels.dtype == np.uint8 and np.array_equal(labels, grey)


def test_colour_images_are_rejected_naming_the_file(tmp_path: Path):
    colour = np.zeros((3, 4, 3), np.uint8)
    colour[1, 2] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour_rgb.png")
    with pytest.raises(MaskError, match=r"colour_rgb\.png is a colour image.*single-channel"):
        read_mask(tmp_path / "colour_rgb.png")
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 2] = 5
    Image.fromarray(rgba).save(tmp_path / "colour_rgba.png")
    with pytest.raises(MaskError, match=r"colour_rgba\.png is a colour image"):
        read_mask(tmp_path / "colour_rgba.png")


def test_unreadable_files_are_mask_errors_naming_the_file(tmp_path: Path):
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    with pytest.raises(MaskError, match=r"cannot read mask file .*garbage\.png"):
        read_mask(tmp_path / "garbage.png")
    with pytest.raises(MaskError, match=r"cannot read mask file .*missing\.png"):
        read_mask(tmp_path / "missing.png")
    Image.fromarray(np.zeros((3, 4), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(MaskError, match=r"float\.tiff has unsupported image mode 'F'"):
        read_mask(tmp_path / "float.tiff")
    assert issubclass(MaskError, ValueError)


# --------------------------------------------------------------------------- writing PNGs


def test_write_png_round_trips_and_matches_a_plain_pil_save(tmp_path: Path):
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10, 30, 30, 220]  # 4 colours, not DAVIS's
    in_palette = np.minimum(labels_3x4(), 3)
    target = tmp_path / "v" / "00000.png"
    write_png(target, in_palette, palette)
    labels, read_palette = read_mask_with_palette(target)
    assert np.array_equal(labels, in_palette) and read_palette[: len(palette)] == palette
    plain = Image.fromarray(in_palette)
    plain.putpalette(palette)
    plain.save(tmp_path / "plain.png")
    assert target.read_bytes() == (tmp_path / "plain.png").read_bytes()
    assert temp_files(tmp_path) == []

    # Label 7 is beyond the 4-colour palette: a plain PIL save would store it as 3 (2-bit PNG).
    write_png(target, labels_3x4(), palette)
    labels, read_palette = read_mask_with_palette(target)
    assert np.array_equal(labels, labels_3x4())
    assert read_palette[:12] == palette and bytes(read_palette[12:24]) == DAVIS_PALETTE[12:24]

    write_png(tmp_path / "bool.png", labels_3x4() > 1)
    assert Image.open(tmp_path / "bool.png").mode == "L"
    assert np.array_equal(read_mask(tmp_path / "bool.png"), (labels_3x4() > 1).astype(np.uint8))


def test_png_encoding_never_wraps_labels(tmp_path: Path):
    wide = np.array([[0, 300], [70, 65535]], dtype=np.int64)
    write_png(tmp_path / "wide.png", wide)
    assert Image.open(tmp_path / "wide.png").mode == "I;16"
    assert np.array_equal(read_mask(tmp_path / "wide.png"), wide)
    with pytest.raises(ValueError, match="do not fit a palette PNG"):
        encode_png(wide, DAVIS_PALETTE)
    with pytest.raises(ValueError, match="do not fit a 16-bit PNG"):
        encode_png(np.array([[0, 65536]]))
    with pytest.raises(ValueError, match="do not fit"):
        encode_png(np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="integer labels"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((2, 2, 3), np.uint8))


def test_merge_gives_overlaps_to_the_smaller_id_and_split_inverts_it():
    a = np.zeros((4, 5), bool)
    a[0:3, 0:3] = True
    b = np.zeros((4, 5), bool)
    b[1:4, 1:5] = True
    merged = merge_objects({2: b, 1: a}, 4, 5)
    assert merged.dtype == np.uint8
    assert merged[1, 1] == 1 and merged[3, 4] == 2 and merged[3, 0] == 0
    split = split_objects(merged)
    assert list(split) == [1, 2]
    assert np.array_equal(split[1], a) and np.array_equal(split[2], b & ~a)
    with pytest.raises(ValueError, match="256"):
        merge_objects({256: a}, 4, 5)
    assert list(split_objects(np.array([[0, 300], [300, 2]], np.uint16))) == [2, 300]


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_replace_and_leave_no_temp_files(tmp_path: Path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "old")
    atomic_write_json(target, {"a": [1, 2]}, fsync=True)
    assert json.loads(target.read_text()) == {"a": [1, 2]} and target.read_text().endswith("\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert temp_files(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's 0o600


def test_failed_atomic_write_keeps_the_old_file_and_no_temp_file(tmp_path: Path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    seen: list[Path] = []

    def write_then_fail(handle) -> None:
        handle.write(b"partial data")
        handle.flush()
        seen.extend(temp_files(tmp_path))
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, write_then_fail)
    assert len(seen) == 1 and seen[0].parent == tmp_path  # the data went to a temporary file
    assert target.read_bytes() == b"old"
    assert temp_files(tmp_path) == []
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "never.bin", write_then_fail)
    assert not (tmp_path / "never.bin").exists()


def test_remove_temp_files_clears_what_a_killed_writer_left(tmp_path: Path):
    (tmp_path / "v" / "001").mkdir(parents=True)
    left = tmp_path / "v" / "001" / f"{mask_io.TEMP_PREFIX}00003.png.abcd{mask_io.TEMP_SUFFIX}"
    left.write_bytes(b"x")
    kept = tmp_path / "v" / "00003.png"
    kept.write_bytes(b"y")
    assert remove_temp_files(tmp_path) == [left]
    assert not left.exists() and kept.exists()
    assert remove_temp_files(tmp_path / "nowhere") == []


def test_mask_io_and_the_evaluators_load_without_torch() -> None:
    """The evaluators and mask IO are numpy/Pillow only; importing them must not pull in torch."""
    import subprocess
    import sys

    code = "import sys, sam2long.mask_io, sav_dataset.sav_evaluator, sav_dataset.lvos_evaluator; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
