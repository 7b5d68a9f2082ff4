"""Live streams: a camera index or a stream URL read once, in order, with bounded latency.

:class:`LiveStreamSource` is a :class:`~sam2.utils.frame_sources.FrameSource` that a session can be
started on like a video file (``predictor.init_state(LiveStreamSource(0))``). A background thread reads
the stream (OpenCV ``VideoCapture``) into a small queue; the tracker takes frames from it in order.
When the tracker is slower than the stream the queue fills and the ``drop`` policy decides:

* ``"oldest"`` (live default): the oldest waiting frame is discarded, so the tracker always gets the
  freshest frames and waits at most ``buffer`` frames behind the stream; dropped frames are counted.
* ``"none"``: the reader waits for the tracker; nothing is dropped (a file played as a stream). A real
  camera then buffers or drops inside its driver, which this class cannot see.

Tracked frames are numbered ``0, 1, 2 ...`` in the order the tracker takes them; ``stream_index(i)``
is frame ``i``'s position in the stream (they differ once frames were dropped). The last ``keep`` taken
frames stay readable (prompts on the current frame, an overlay drawn a few frames late); older ones are
gone. The stream's length is unknown, so ``len()`` is a capacity and propagation ends when the stream
does. SAM2Long's output lag is bounded with its ``max_lag`` setting (see :mod:`sam2long.config`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from sam2.utils.frame_sources import FrameSource, FrameSourceError

DROP_POLICIES = ("oldest", "none")
DEFAULT_CAPACITY = 10**9  # frames; a stream's length is unknown


@dataclass(frozen=True)
class StreamStats:
    """What a live source has read, handed to the tracker, and dropped."""

    captured: int  # frames read from the stream
    delivered: int  # frames handed to the tracker
    dropped: int  # frames discarded by the drop policy
    waiting: int  # frames read and not yet taken
    ended: bool


class _FrameNames(Sequence):
    """``000000``, ``000001`` ... for as many frames as the capacity (computed, not stored)."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [f"{i:06d}" for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return f"{index % self._count:06d}"


def describe(spec: Union[int, str]) -> str:
    return f"camera {spec}" if isinstance(spec, int) else f"stream {spec}"


def parse_stream_spec(text: str) -> Union[int, str]:
    """A command-line video argument as a live spec: digits are a camera index, else a URL/path."""
    return int(text) if text.isdigit() else text


def is_stream_spec(text: str) -> bool:
    """Whether a command-line video argument names a camera index or a network stream URL."""
    return text.isdigit() or "://" in text


class LiveStreamSource(FrameSource):
    """Frames of a camera (``spec`` an int) or a stream URL / file (a str), read once, in order.

    Args:
        spec: camera index or URL (anything ``cv2.VideoCapture`` opens).
        drop: ``"oldest"`` or ``"none"`` (see the module docstring).
        buffer: frames the queue holds before the drop policy applies.
        keep: taken frames that stay readable.
        capacity: the largest number of frames a session on this source can track.
        max_frames: stop after reading this many frames from the stream (``None``: until it ends).
        capture: an opened capture with OpenCV's ``read() -> (ok, bgr)`` / ``release()`` (tests, custom
            cameras); default ``cv2.VideoCapture(spec)``.
    """

    kind = "live stream"
    live = True

    def __init__(
        self,
        spec: Union[int, str],
        drop: str = "oldest",
        buffer: int = 2,
        keep: int = 32,
        capacity: int = DEFAULT_CAPACITY,
        max_frames: Optional[int] = None,
        capture: Any = None,
        first_frame_timeout: float = 10.0,
    ) -> None:
        if drop not in DROP_POLICIES:
            raise ValueError(f"drop must be one of {DROP_POLICIES}, got {drop!r}")
        if buffer < 1 or keep < 1 or capacity < 1:
            raise ValueError(f"buffer, keep and capacity must be >= 1, got {buffer}, {keep}, {capacity}")
        self.spec = spec
        self.drop = drop
        self.buffer = buffer
        self.keep = keep
        self.capacity = capacity
        self.max_frames = max_frames
        self._capture = capture if capture is not None else self._open(spec)
        self._fps = self._capture_fps()
        self._queue: deque[tuple[int, np.ndarray]] = deque()
        self._kept: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._captured = 0
        self._delivered = 0
        self._dropped = 0
        self._ended = False
        self._closed = False
        self._error: Optional[BaseException] = None
        self._reader = threading.Thread(target=self._read_loop, name="live-stream", daemon=True)
        self._reader.start()
        with self._lock:
            if not self._changed.wait_for(lambda: self._queue or self._ended, first_frame_timeout):
                self.close()
                raise FrameSourceError(f"{describe(spec)} gave no frame within {first_frame_timeout:g} s")
            if not self._queue:
                self._raise_error()
                raise FrameSourceError(f"{describe(spec)} gave no frame")
            height, width = self._queue[0][1].shape[:2]
        self._size = (height, width)
        self.get(0)

    @staticmethod
    def _open(spec: Union[int, str]) -> Any:
        import cv2

        capture = cv2.VideoCapture(spec)
        if not capture.isOpened():
            raise FrameSourceError(f"cannot open {describe(spec)} with OpenCV")
        return capture

    def _capture_fps(self) -> Optional[float]:
        get = getattr(self._capture, "get", None)
        if get is None:
            return None
        import cv2

        fps = float(get(cv2.CAP_PROP_FPS) or 0.0)
        return fps if fps > 0 else None

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        import cv2

        try:
            while True:
                with self._lock:
                    if self._closed or (self.max_frames is not None and self._captured >= self.max_frames):
                        break
                    if self.drop == "none":
                        self._changed.wait_for(lambda: len(self._queue) < self.buffer or self._closed)
                        if self._closed:
                            break
                ok, bgr = self._capture.read()
                if not ok or bgr is None:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                with self._lock:
                    self._queue.append((self._captured, rgb))
                    self._captured += 1
                    while len(self._queue) > self.buffer:
                        self._queue.popleft()
                        self._dropped += 1
                    self._changed.notify_all()
        except BaseException as error:  # surfaced to the tracker on its next read
            with self._lock:
                self._error = error
        finally:
            with self._lock:
                self._ended = True
                self._changed.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise FrameSourceError(f"{describe(self.spec)} failed while reading: {error}") from error

    # ------------------------------------------------------------------ FrameSource

    @property
    def frame_names(self) -> Sequence[str]:  # type: ignore[override]
        return _FrameNames(self.capacity)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def fps(self) -> Optional[float]:
        return self._fps

    def __len__(self) -> int:
        return self.capacity

    @property
    def stats(self) -> StreamStats:
        with self._lock:
            return StreamStats(self._captured, self._delivered, self._dropped, len(self._queue), self._ended)

    def has_frame(self, index: int) -> bool:
        """Whether frame ``index`` exists; waits for the stream to deliver the next frame or end."""
        with self._lock:
            if index < self._delivered:
                return True
            if index > self._delivered:
                return False if self._ended and not self._queue else True
            self._changed.wait_for(lambda: self._queue or self._ended)
            return bool(self._queue)

    def stream_index(self, index: int) -> int:
        """Position in the stream of tracked frame ``index`` (while it is kept)."""
        with self._lock:
            return self._held(index)[0]

    def _held(self, index: int) -> tuple[int, np.ndarray]:
        kept = self._kept.get(index)
        if kept is None:
            oldest = next(iter(self._kept), None)
            raise FrameSourceError(
                f"{describe(self.spec)}: frame {index} is no longer held (live streams keep the last "
                f"{self.keep} frames; oldest held: {oldest})"
            )
        return kept

    def get(self, index: int) -> np.ndarray:
        self._check_index(index)
        with self._lock:
            if index < self._delivered:
                return self._held(index)[1]
            if index > self._delivered:
                raise FrameSourceError(
                    f"{describe(self.spec)} is read in order: frame {index} asked, the next one is "
                    f"{self._delivered}"
                )
            self._changed.wait_for(lambda: self._queue or self._ended)
            if not self._queue:
                self._raise_error()
                raise FrameSourceError(f"{describe(self.spec)} ended after {self._delivered} frames")
            entry = self._queue.popleft()
            self._kept[index] = entry
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)
            self._delivered += 1
            self._changed.notify_all()
        return entry[1]

    def close(self) -> None:
        """Stop reading and release the capture."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5.0)
        release = getattr(self._capture, "release", None)
        if release is not None:
            release()
