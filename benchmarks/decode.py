"""Video decoding speed by access order: PyAV ``VideoFileSource`` against OpenCV frame seeking.

Each decoder reads the clip forward (0, 1, ...), in reverse (T-1, T-2, ...) and in a random order,
starting each time from a freshly opened file, and the table gives milliseconds per frame (RGB
uint8 out; the median of ``--repeats`` runs, as the machine may be shared). ``VideoFileSource`` indexes the file on open (reported separately), continues its
decoder on forward reads, seeks to the keyframe before a frame otherwise and keeps a bounded
cache of decoded frames (default 256 MiB). The OpenCV rows use what the previous loader did:
``cap.read()`` when the next frame is wanted, else ``cap.set(CAP_PROP_POS_FRAMES, i)`` before
it, which decodes from a keyframe for every frame; since that is slow, its reverse and random
rows time ``--opencv-sample`` frames spread over the clip. ``wrong`` counts OpenCV frames whose
mean absolute difference from the exact frame exceeds 3 grey levels. Target: reverse <= 1.5x
forward for ``VideoFileSource``.

``--make-720p OUT`` first writes a 1280x720 H.264 clip with one keyframe every ``--gop`` frames
and 3 B-frames, upscaled from the input's frames, and benchmarks that.

Example::

    python benchmarks/decode.py /work/shared/data/videos/bedroom.mp4
    python benchmarks/decode.py /work/shared/data/videos/bedroom.mp4 --make-720p /tmp/bedroom_720p.mp4
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from sam2.utils.frame_sources import VideoFileSource


def machine() -> str:
    """CPU model and core count, from /proc/cpuinfo where available."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def make_720p(source: Path, output: Path, gop: int) -> None:
    """Re-encode ``source`` upscaled to 1280x720 H.264 (CRF 23, ``gop`` frames per keyframe, 3 B-frames)."""
    with av.open(str(source)) as inp, av.open(str(output), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        stream.options = {"crf": "23", "bf": "3", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for index, frame in enumerate(inp.decode(video=0)):
            scaled = frame.reformat(width=1280, height=720, format="yuv420p")
            scaled.pts, scaled.time_base = index, Fraction(1, 30)
            out.mux(stream.encode(scaled))
        out.mux(stream.encode())


def describe(path: Path) -> str:
    """Codec, size, frame count, keyframe count and whether the stream reorders frames (B-frames)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size]
        codec, width, height = stream.codec_context.name, stream.width, stream.height
    pts = [value for value, _ in packets]
    keyframes = sum(key for _, key in packets)
    reorders = "yes" if pts != sorted(pts) else "no"
    return f"{codec} {width}x{height}, {len(pts)} frames, {keyframes} keyframe(s), B-frames: {reorders}"


def time_source(path: Path, order: list[int]) -> tuple[float, float, int]:
    """(open seconds, ms per frame, frames decoded) for a fresh VideoFileSource reading ``order``."""
    start = time.perf_counter()
    source = VideoFileSource(path)
    opened = time.perf_counter() - start
    decoded = source.frames_decoded
    start = time.perf_counter()
    for index in order:
        source.get(index)
    elapsed = time.perf_counter() - start
    decoded = source.frames_decoded - decoded
    source.close()
    return opened, 1000 * elapsed / len(order), decoded


def time_opencv(path: Path, order: list[int], exact: list[np.ndarray] | None) -> tuple[float, int]:
    """(ms per frame, wrong frames) for a fresh cv2.VideoCapture reading ``order`` by seeking."""
    capture = cv2.VideoCapture(str(path))
    next_index, wrong, elapsed = 0, 0, 0.0
    for index in order:
        start = time.perf_counter()
        if index != next_index:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None
        elapsed += time.perf_counter() - start
        next_index = index + 1
        if exact is not None and (frame is None or np.abs(frame.astype(int) - exact[index]).mean() > 3):
            wrong += 1
    capture.release()
    return 1000 * elapsed / len(order), wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--make-720p", type=Path, default=None, metavar="OUT")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of --make-720p")
    parser.add_argument(
        "--opencv-sample", type=int, default=30, help="frames timed for OpenCV reverse/random"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is printed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = args.video
    if args.make_720p is not None:
        make_720p(args.video, args.make_720p, args.gop)
        path = args.make_720p

    print(f"command: python {' '.join(sys.argv)}")
    print(f"date:    {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(
        f"libs:    python {platform.python_version()}, av {av.__version__} "
        f"(libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}), "
        f"opencv {cv2.__version__}, numpy {np.__version__}"
    )
    print(f"video:   {path} ({describe(path)})")

    with av.open(str(path)) as container:
        exact = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    count = len(exact)
    rng = np.random.default_rng(args.seed)
    orders = {
        "forward": list(range(count)),
        "reverse": list(reversed(range(count))),
        "random": rng.permutation(count).tolist(),
    }
    sample = np.linspace(0, count - 1, min(args.opencv_sample, count)).round().astype(int).tolist()
    opencv_orders = {
        "forward": orders["forward"],
        "reverse": list(reversed(sample)),
        "random": rng.permutation(sample).tolist(),
    }

    print()
    print(
        f"{'decoder':<28} {'order':<8} {'frames':>6} {'ms/frame':>9} {'vs fwd':>7} {'decoded':>8} {'wrong':>6}"
    )
    # rounds interleave the orders, so load from other processes hits every row alike
    source_runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in orders}
    opencv_runs: dict[str, list[tuple[float, int]]] = {name: [] for name in orders}
    for _ in range(args.repeats):
        for name in orders:
            source_runs[name].append(time_source(path, orders[name]))
            opencv_runs[name].append(time_opencv(path, opencv_orders[name], exact))

    forward_ms = float(np.median([run[1] for run in source_runs["forward"]]))
    for name, runs in source_runs.items():
        ms = float(np.median([run[1] for run in runs]))
        print(
            f"{'PyAV VideoFileSource':<28} {name:<8} {len(orders[name]):>6} {ms:>9.2f} "
            f"{ms / forward_ms:>6.2f}x {runs[0][2]:>8} {'-':>6}"
        )
    opened = float(np.median([run[0] for runs in source_runs.values() for run in runs]))
    print(f"{'  (index + frame 0 on open)':<28} {'':<8} {'':>6} {1000 * opened:>9.1f} ms total")
    forward_ms = float(np.median([run[0] for run in opencv_runs["forward"]]))
    for name, runs in opencv_runs.items():
        ms = float(np.median([run[0] for run in runs]))
        print(
            f"{'OpenCV seek (previous)':<28} {name:<8} {len(opencv_orders[name]):>6} {ms:>9.2f} "
            f"{ms / forward_ms:>6.2f}x {'-':>8} {runs[0][1]:>6}"
        )


if __name__ == "__main__":
    main()
