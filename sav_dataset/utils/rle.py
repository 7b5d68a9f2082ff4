"""COCO run-length encoding (RLE) in pure numpy, so SA-V annotations need no pycocotools.

A COCO RLE is ``{"size": [height, width], "counts": ...}`` where ``counts`` lists the lengths of
alternating runs of 0s and 1s over the mask read in column-major (Fortran) order, starting
with 0s. ``counts`` is either a list of ints or the compact COCO string: each count (after the
third, stored as the difference to the count two places back) is written as little-endian
5-bit groups, one character per group offset by 48, bit 0x20 meaning "more groups follow" and
bit 0x10 of the last group being the sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CHAR_OFFSET = 48
_CONTINUE = 0x20
_SIGN = 0x10
_PAYLOAD = 0x1F


def counts_from_string(text: str) -> list[int]:
    """Decode a compact COCO counts string into run lengths."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value = 0
        shift = 0
        while True:
            code = ord(text[pos]) - _CHAR_OFFSET
            pos += 1
            value |= (code & _PAYLOAD) << shift
            shift += 5
            if not code & _CONTINUE:
                if code & _SIGN:
                    value -= 1 << shift
                break
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def counts_to_string(counts: list[int]) -> str:
    """Encode run lengths into the compact COCO counts string (inverse of ``counts_from_string``)."""
    chars: list[str] = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        while True:
            group = value & _PAYLOAD
            value >>= 5
            done = value == -1 if group & _SIGN else value == 0
            if not done:
                group |= _CONTINUE
            chars.append(chr(group + _CHAR_OFFSET))
            if done:
                break
    return "".join(chars)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one COCO RLE dict into a (height, width) bool mask."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = np.asarray(counts_from_string(counts) if isinstance(counts, str) else counts, dtype=np.int64)
    if runs.sum() != height * width:
        raise ValueError(f"RLE run lengths sum to {runs.sum()}, expected {height}x{width}={height * width}")
    values = np.arange(runs.size) % 2 == 1
    column_major = np.repeat(values, runs)
    return column_major.reshape(width, height).T


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2-D binary mask as a COCO RLE dict with a compact string ``counts``."""
    binary = np.asarray(mask).astype(bool)
    height, width = binary.shape
    flat = binary.T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [height, width], "counts": counts_to_string(runs)}
