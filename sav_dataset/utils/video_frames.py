"""Extract numbered JPEG frames from a video file at a chosen frame rate (OpenCV).

Output frames are named ``{index:05d}.jpg`` starting at 0, the layout of SA-V
``JPEGImages_24fps`` and DAVIS ``JPEGImages``. Frame ``k`` of the output is the source frame
closest to time ``k / fps``; with ``fps`` at or above the source rate (or omitted) every
source frame is kept.

Usage::

    python -m sav_dataset.utils.video_frames --video sav_000001.mp4 --out_dir frames/sav_000001 --fps 24
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from sam2long.mask_io import atomic_write_bytes


def _source_indices(source_fps: float, target_fps: float | None):
    """Infinite generator of the source frame indices to keep, in increasing order."""
    step = 1.0 if target_fps is None or target_fps >= source_fps else source_fps / target_fps
    k = 0
    last = -1
    while True:
        index = int(round(k * step))
        if index > last:
            yield index
            last = index
        k += 1


def extract_frames(
    video: str | Path,
    out_dir: str | Path,
    fps: float | None = None,
    quality: int = 95,
    max_frames: int | None = None,
) -> list[Path]:
    """Decode ``video`` and write JPEG frames sampled at ``fps``; returns the written paths."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise OSError(f"cannot open video {video}")
    source_fps = capture.get(cv2.CAP_PROP_FPS)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if fps is not None and not source_fps > 0:
        raise OSError(f"{video} reports no frame rate; cannot resample to {fps} fps")
    wanted = _source_indices(source_fps if source_fps > 0 else 1.0, fps)
    next_index = next(wanted)
    written: list[Path] = []
    out = Path(out_dir)
    source_index = 0
    try:
        while max_frames is None or len(written) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            if source_index == next_index:
                ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
                if not ok:
                    raise OSError(f"JPEG encoding failed for frame {source_index} of {video}")
                path = out / f"{len(written):05d}.jpg"
                atomic_write_bytes(path, buffer.tobytes())
                written.append(path)
                next_index = next(wanted)
            source_index += 1
    finally:
        capture.release()
    if not written:
        raise OSError(f"no frames could be decoded from {video}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="input video file")
    parser.add_argument("--out_dir", required=True, help="folder for the numbered JPEG frames")
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: source rate)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 0-100")
    parser.add_argument("--max_frames", type=int, default=None, help="stop after this many output frames")
    args = parser.parse_args(argv)
    paths = extract_frames(args.video, args.out_dir, args.fps, args.quality, args.max_frames)
    print(f"wrote {len(paths)} frames to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
