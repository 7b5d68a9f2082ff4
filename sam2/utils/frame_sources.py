"""Frame sources: random access to the RGB frames of a video, whatever holds them.

A :class:`FrameSource` knows its number of frames, their names, the common frame size and how
to return frame ``i`` as a uint8 ``(H, W, 3)`` RGB array. Three sources cover the usual inputs:

* :class:`ImageFolderSource` - a folder of JPEG/PNG files (numeric names sort numerically,
  other names naturally, e.g. ``frame2.png`` before ``frame10.png``);
* :class:`VideoFileSource` - a video file (mp4, mov, mkv, webm, avi, ...) decoded frame-accurately
  with PyAV, with keyframe-aware seeking and a bounded cache of decoded frames;
* :class:`ArrayFrameSource` - frames already in memory (a THWC uint8 array, or a list of HWC
  arrays or PIL images).

:func:`open_frame_source` picks the right one for a path or array, and
:func:`resize_to_model_input` turns a frame into the square [0, 1] tensor the model expects,
exactly as upstream SAM 2 does for JPEG folders (PIL resize, then division by 255).
"""

from __future__ import annotations

import bisect
import os
import re
import threading
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

VideoInput = Union[str, os.PathLike, np.ndarray, torch.Tensor, Sequence[Any], "FrameSource"]


class FrameSourceError(RuntimeError):
    """A video or frame could not be found, read, or does not fit the other frames."""


class FrameSource(ABC):
    """Random access to the frames of one video as uint8 ``(H, W, 3)`` RGB arrays."""

    #: short name of the storage kind, used in progress messages
    kind: str = "frames"

    @property
    @abstractmethod
    def frame_names(self) -> list[str]:
        """One name per frame, in playback order."""

    @property
    @abstractmethod
    def size(self) -> tuple[int, int]:
        """The frames' common ``(height, width)``."""

    @abstractmethod
    def get(self, index: int) -> np.ndarray:
        """Frame ``index`` as a uint8 ``(H, W, 3)`` RGB array."""

    def __len__(self) -> int:
        return len(self.frame_names)

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in range(len(self)):
            yield self.get(index)

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame index {index} out of range for {len(self)} frames")
        return index % len(self)

    def _check_size(self, frame: np.ndarray, what: str) -> np.ndarray:
        if frame.shape[:2] != self.size:
            raise FrameSourceError(
                f"{what} has size {frame.shape[0]}x{frame.shape[1]} (HxW) but the video's "
                f"frames are {self.size[0]}x{self.size[1]}"
            )
        return frame


def _natural_key(name: str) -> list[Any]:
    """Sort key that compares digit runs as numbers: ``a2`` < ``a10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def sort_frame_names(names: Sequence[str]) -> list[str]:
    """Order frame file names numerically when every stem is an integer, naturally otherwise."""
    stems = [os.path.splitext(name)[0] for name in names]
    if stems and all(stem.isdigit() for stem in stems):
        return sorted(names, key=lambda name: (int(os.path.splitext(name)[0]), name))
    return sorted(names, key=lambda name: (_natural_key(name), name))


def read_image_file(path: Path) -> np.ndarray:
    """Decode an image file into a uint8 ``(H, W, 3)`` RGB array, naming the file on failure."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise FrameSourceError(f"cannot read frame file {path}: {error}") from error


@dataclass
class ImageFolderSource(FrameSource):
    """Frames stored as JPEG/PNG files in one folder (other files are ignored)."""

    folder: Path
    frame_paths: list[Path] = field(init=False, repr=False)
    _size: tuple[int, int] = field(init=False, repr=False)

    kind = "images"

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if not self.folder.is_dir():
            raise FrameSourceError(f"frame folder {self.folder} does not exist or is not a folder")
        names = [
            entry.name
            for entry in os.scandir(self.folder)
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        ]
        if not names:
            raise FrameSourceError(f"no JPEG or PNG frames found in {self.folder}")
        self.frame_paths = [self.folder / name for name in sort_frame_names(names)]
        self._size = read_image_file(self.frame_paths[0]).shape[:2]

    @property
    def frame_names(self) -> list[str]:
        return [path.stem for path in self.frame_paths]

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def get(self, index: int) -> np.ndarray:
        path = self.frame_paths[self._check_index(index)]
        return self._check_size(read_image_file(path), f"frame file {path}")


class TruncatedVideoError(FrameSourceError, IndexError):
    """A frame past the last decodable frame of a truncated or damaged video was requested."""


#: default byte budget of a :class:`VideoFileSource`'s cache of decoded frames
DEFAULT_VIDEO_CACHE_BYTES = 256 * 2**20


@dataclass
class VideoFileSource(FrameSource):
    """Frames of a video file, decoded frame-accurately with PyAV (FFmpeg).

    Opening demuxes the file once without decoding it: every frame is indexed by its
    presentation timestamp in display order (so B-frames and variable frame rates are handled)
    and the keyframes are noted, so frame ``i`` maps to one timestamp and to the keyframe its
    decoding starts from. Frame 0 is then decoded to learn the displayed size. Files without
    usable timestamps (raw ``.h264`` streams) are counted by one decoding pass instead and read
    from their start whenever a read goes backwards.

    Reads that move forward continue the open decoder; other reads seek to the keyframe at or
    before the frame and decode forward to it. Frames decoded by such reads are kept in an LRU
    cache bounded by ``cache_bytes`` (YUV, about 1.5 bytes per pixel), so reverse playback
    decodes each group of pictures about once; reading in turn keeps only the last frame read.
    Frames are returned in display orientation: the stream's rotation (display matrix) is
    applied, and :attr:`size` is the rotated ``(height, width)``.

    A truncated or damaged file keeps only the frames that can be decoded in full (a warning
    says how many); reading past them raises :class:`TruncatedVideoError`. Reads are serialized
    by a lock because PyAV containers are not thread-safe.
    """

    path: Path
    cache_bytes: int = DEFAULT_VIDEO_CACHE_BYTES
    #: frames decoded so far (including frames decoded only to reach another one)
    frames_decoded: int = field(init=False, default=0)
    #: times the decoder was repositioned (a seek, or a reopen at the start of the file)
    seeks: int = field(init=False, default=0)
    _pts: list[int] | None = field(init=False, repr=False, default=None)
    _index_of_pts: dict[int, int] = field(init=False, repr=False, default_factory=dict)
    _key_ranks: list[int] = field(init=False, repr=False, default_factory=list)
    _num_frames: int = field(init=False, repr=False, default=0)
    _size: tuple[int, int] = field(init=False, repr=False, default=(0, 0))
    _quarter_turns: int = field(init=False, repr=False, default=0)
    _fps: float | None = field(init=False, repr=False, default=None)
    _damaged: bool = field(init=False, repr=False, default=False)
    _container: Any = field(init=False, repr=False, default=None)
    _stream: Any = field(init=False, repr=False, default=None)
    _decoder: Iterator[Any] | None = field(init=False, repr=False, default=None)
    _floor: int = field(init=False, repr=False, default=0)
    _next: int | None = field(init=False, repr=False, default=None)
    _ordinal: int = field(init=False, repr=False, default=0)
    _decode_problem: str | None = field(init=False, repr=False, default=None)
    _cache: OrderedDict[int, tuple[Any, int]] = field(init=False, repr=False, default_factory=OrderedDict)
    _cached_bytes: int = field(init=False, repr=False, default=0)
    _last: tuple[int, Any] | None = field(init=False, repr=False, default=None)
    # one converter for all frames: PyAV's per-frame one rebuilds its scaler every time (~2 ms)
    _reformatter: VideoReformatter = field(init=False, repr=False, default_factory=VideoReformatter)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    kind = "video"

    @property
    def damaged(self) -> bool:
        """Whether the file is truncated or damaged (only its first ``len(self)`` frames decode)."""
        return self._damaged

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise FrameSourceError(f"video file {self.path} does not exist")
        self._index_frames()
        first = self._first_frame()
        turns = round(first.rotation / 90) % 4  # counter-clockwise quarter turns
        self._quarter_turns = turns
        self._size = (first.width, first.height) if turns % 2 else (first.height, first.width)
        if self._damaged:
            warnings.warn(
                f"video file {self.path} is truncated or damaged: only its first {self._num_frames} "
                f"frames (0 to {self._num_frames - 1}) can be decoded",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ index

    def _open_container(self) -> tuple[Any, Any]:
        """A fresh PyAV container on the file and its first video stream."""
        try:
            container = av.open(str(self.path))
        except av.error.FFmpegError as error:
            raise FrameSourceError(f"cannot open video file {self.path}: {error}") from error
        if not container.streams.video:
            container.close()
            raise FrameSourceError(f"video file {self.path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container, stream

    def _index_frames(self) -> None:
        """Demux every packet (no decoding) to index the frames by timestamp in display order.

        A corrupt packet, a demuxing error or fewer packets than the container declares mark
        the file as damaged; the index then stops where the frames read so far are complete.
        """
        container, stream = self._open_container()
        packets: list[tuple[int | None, bool]] = []
        damaged, read = False, 0
        with container:
            declared = stream.frames
            rate = stream.average_rate or stream.guessed_rate
            self._fps = float(rate) if rate else None
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    read += 1
                    if packet.is_corrupt:
                        damaged = True
                        break
                    if not packet.is_discard:
                        packets.append((packet.pts, packet.is_keyframe))
            except av.error.FFmpegError:
                damaged = True
        self._damaged = damaged or 0 < read < declared
        timestamps = [pts for pts, _ in packets]
        if None in timestamps or len(set(timestamps)) != len(timestamps):
            self._count_by_decoding()
            return
        order = sorted(timestamps)
        rank = {pts: position for position, pts in enumerate(order)}
        keep = len(order)
        if self._damaged:
            # A packet lost at the cut can only belong to the last `lag` display positions, where
            # `lag` is how far behind its display position a packet was seen at most (B-frames).
            lag = max((position - rank[pts] for position, pts in enumerate(timestamps)), default=0)
            keep -= max(lag, 0)
        self._set_index(order[:keep], sorted(rank[pts] for pts, key in packets if key))

    def _count_by_decoding(self) -> None:
        """Index a stream without usable timestamps by counting the frames one decoding pass yields."""
        container, stream = self._open_container()
        count, self._decode_problem = 0, None
        with container:
            try:
                count = sum(1 for _ in self._decode_packets(container, stream))
            except av.error.FFmpegError:
                self._damaged = True
        self._damaged = self._damaged or self._decode_problem is not None
        self._pts, self._index_of_pts, self._key_ranks = None, {}, []
        self._num_frames = count

    def _set_index(self, pts: list[int], key_ranks: list[int]) -> None:
        """Adopt the display-order timestamps and the display positions of the keyframes."""
        self._pts = pts
        self._index_of_pts = {value: position for position, value in enumerate(pts)}
        self._key_ranks = [rank for rank in key_ranks if rank < len(pts)]
        self._num_frames = len(pts)

    def _gop_start(self, index: int) -> int:
        """Display position of the keyframe that decoding frame ``index`` starts from (-1: file start)."""
        position = bisect.bisect_right(self._key_ranks, index) - 1
        return self._key_ranks[position] if position >= 0 else -1

    def _first_frame(self) -> Any:
        """Decode from the file start; frames shown before the decoder's first output are dropped."""
        if self._num_frames == 0:
            raise FrameSourceError(f"video file {self.path} contains no decodable frame")
        self._position_at(-1)
        position = None
        try:
            while position is None:
                frame = next(self._decoder)
                self.frames_decoded += 1
                position = self._frame_index(frame)
        except (StopIteration, av.error.FFmpegError) as error:
            self._reset_decoder()
            raise FrameSourceError(f"video file {self.path} contains no decodable frame") from error
        if position > 0 and self._pts is not None:
            ranks = [rank - position for rank in self._key_ranks if rank >= position]
            self._set_index(self._pts[position:], ranks)
        self._next = 1
        self._last = (0, frame)
        return frame

    # ------------------------------------------------------------------ decoding

    def _reset_decoder(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._container is not None:
            self._container.close()
            self._container = self._stream = None
        self._next = None

    def _position_at(self, start: int) -> None:
        """Make the decoder's next frames start at keyframe position ``start`` (-1: file start)."""
        self.seeks += 1
        if self._decoder is not None:
            self._decoder.close()
        if start <= 0 or self._container is None:
            self._reset_decoder()
            self._container, self._stream = self._open_container()
        if start > 0:
            self._container.seek(self._pts[start], stream=self._stream, backward=True)
        self._floor, self._next, self._ordinal = max(start, 0), None, 0
        self._decode_problem = None
        self._decoder = self._decode_packets(self._container, self._stream)

    def _decode_packets(self, container: Any, stream: Any) -> Iterator[Any]:
        """Decoded frames in display order. A corrupt packet, or one the decoder rejects, is
        skipped (its frame is missing; the decoder goes on, as players do) and noted."""
        for packet in container.demux(stream):
            if packet.is_corrupt:
                self._decode_problem = "its data is cut off or corrupt"
                continue
            try:
                frames = packet.decode()
            except av.error.FFmpegError as error:
                self._decode_problem = str(error)
                continue
            yield from frames

    def _frame_index(self, frame: Any) -> int | None:
        """Display position of a decoded frame (None: not an indexed frame)."""
        if self._pts is None:
            self._ordinal += 1
            return self._ordinal - 1 if self._ordinal <= self._num_frames else None
        return self._index_of_pts.get(frame.pts)

    def _decode_to(self, index: int) -> Any:
        """Decode frame ``index``, continuing the open decoder when that is no slower than a seek."""
        start = self._gop_start(index)
        in_turn = self._decoder is not None and index == self._next
        if self._decoder is None or self._next is None or index < self._next or start > self._next:
            self._position_at(start)
        while True:
            try:
                frame = next(self._decoder)
            except StopIteration:
                self._reset_decoder()
                raise FrameSourceError(
                    f"cannot decode frame {index} of video file {self.path}: "
                    f"{self._decode_problem or 'the decoder ended before it'}"
                ) from None
            except av.error.FFmpegError as error:
                self._reset_decoder()
                raise FrameSourceError(
                    f"cannot decode frame {index} of video file {self.path}: {error}"
                ) from error
            self.frames_decoded += 1
            position = self._frame_index(frame)
            if position is None or position < self._floor:
                continue  # leading frames of the keyframe we sought to (they need earlier frames)
            if self._next is None and position != self._floor and self._floor > 0:
                # the seek landed past the keyframe: start one group of pictures earlier
                self._position_at(self._gop_start(self._floor - 1))
                continue
            self._next = position + 1
            if position < index or not in_turn:
                self._remember(position, frame)
            if position == index:
                return frame
            if position > index:
                self._reset_decoder()
                raise FrameSourceError(
                    f"cannot decode frame {index} of video file {self.path}: "
                    f"{self._decode_problem or 'the decoder skipped it'}"
                )

    def _remember(self, position: int, frame: Any) -> None:
        """Cache a decoded frame, evicting the least recently used ones beyond the byte budget.

        Frames read in turn (the decoder's next frame) are not cached: holding every frame of a
        forward pass would only cost memory, and time to allocate it.
        """
        nbytes = sum(plane.buffer_size for plane in frame.planes)
        previous = self._cache.pop(position, None)
        if previous is not None:
            self._cached_bytes -= previous[1]
        self._cache[position] = (frame, nbytes)
        self._cached_bytes += nbytes
        while self._cached_bytes > self.cache_bytes and self._cache:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._cached_bytes -= evicted

    # ------------------------------------------------------------------ FrameSource

    @property
    def frame_names(self) -> list[str]:
        return [f"{index:05d}" for index in range(self._num_frames)]

    def __len__(self) -> int:
        return self._num_frames

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def fps(self) -> float | None:
        """Average frame rate the file declares (None when it declares none)."""
        return self._fps

    @property
    def cached_frames(self) -> int:
        """Number of decoded frames held in the cache."""
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded frames held in the cache (at most ``cache_bytes``)."""
        return self._cached_bytes

    def _check_index(self, index: int) -> int:
        if self._damaged and index >= self._num_frames:
            raise TruncatedVideoError(
                f"cannot decode frame {index} of video file {self.path}: the file is truncated or "
                f"damaged and its last decodable frame is {self._num_frames - 1}"
            )
        return super()._check_index(index)

    def get(self, index: int) -> np.ndarray:
        index = self._check_index(index)
        with self._lock:
            cached = self._cache.get(index)
            if self._last is not None and self._last[0] == index:
                frame = self._last[1]
            elif cached is not None:
                self._cache.move_to_end(index)
                frame = cached[0]
            else:
                frame = self._decode_to(index)
            self._last = (index, frame)
            image = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        if self._quarter_turns:
            image = np.ascontiguousarray(np.rot90(image, self._quarter_turns))
        return self._check_size(image, f"frame {index} of video file {self.path}")

    def close(self) -> None:
        """Release the decoder and the cached frames (the decoder is reopened on the next read)."""
        with self._lock:
            self._reset_decoder()
            self._cache.clear()
            self._cached_bytes, self._last = 0, None


def _as_rgb_array(frame: Any, index: int) -> np.ndarray:
    """Validate one in-memory frame as a uint8 ``(H, W, 3)`` array."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise FrameSourceError(f"in-memory frame {index} has shape {array.shape}; expected (H, W, 3) RGB")
    if array.dtype != np.uint8:
        raise FrameSourceError(f"in-memory frame {index} has dtype {array.dtype}; expected uint8")
    return array


@dataclass
class ArrayFrameSource(FrameSource):
    """Frames already in memory: a uint8 ``(T, H, W, 3)`` array (numpy or CPU torch) or a
    sequence of uint8 ``(H, W, 3)`` arrays / PIL images, all of the same size."""

    frames: Any = field(repr=False)
    _frames: list[np.ndarray] = field(init=False, repr=False)

    kind = "array"

    def __post_init__(self) -> None:
        frames = self.frames
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise FrameSourceError(f"frame array has shape {frames.shape}; expected (T, H, W, 3)")
        self._frames = [_as_rgb_array(frame, index) for index, frame in enumerate(frames)]
        if not self._frames:
            raise FrameSourceError("no frames given (empty frame array)")
        for index, frame in enumerate(self._frames):
            self._check_size(frame, f"in-memory frame {index}")

    @property
    def frame_names(self) -> list[str]:
        return [f"{index:05d}" for index in range(len(self._frames))]

    @property
    def size(self) -> tuple[int, int]:
        return self._frames[0].shape[:2]

    def get(self, index: int) -> np.ndarray:
        return self._frames[self._check_index(index)]


def open_frame_source(video: VideoInput) -> FrameSource:
    """The frame source for ``video``: a frame folder, a video file, in-memory frames, or an
    existing :class:`FrameSource` (returned unchanged)."""
    if isinstance(video, FrameSource):
        return video
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_dir():
            return ImageFolderSource(path)
        if path.is_file():
            return VideoFileSource(path)
        raise FrameSourceError(f"video path {path} is neither a frame folder nor a video file")
    if isinstance(video, (np.ndarray, torch.Tensor, list, tuple)):
        return ArrayFrameSource(video)
    raise TypeError(
        f"cannot load video frames from {type(video).__name__}; pass a frame folder, a video file, "
        "an array of frames or a FrameSource"
    )


def resize_to_model_input(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """Resize an RGB uint8 frame to ``image_size x image_size`` and scale it to [0, 1].

    Uses PIL's default resampling on the RGB image followed by a float64 division by 255 and a
    cast to float32, which reproduces upstream's JPEG-folder pipeline bit for bit. Returns a
    float32 ``(3, S, S)`` tensor.
    """
    resized = np.asarray(Image.fromarray(frame).resize((image_size, image_size)))
    return torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
