"""Frame sources: random access to the RGB frames of a video, whatever holds them.

A :class:`FrameSource` knows its number of frames, their names, the common frame size and how
to return frame ``i`` as a uint8 ``(H, W, 3)`` RGB array. Three sources cover the usual inputs:

* :class:`ImageFolderSource` - a folder of JPEG/PNG files (numeric names sort numerically,
  other names naturally, e.g. ``frame2.png`` before ``frame10.png``);
* :class:`VideoFileSource` - a video file (mp4, avi, ...) decoded with OpenCV;
* :class:`ArrayFrameSource` - frames already in memory (a THWC uint8 array, or a list of HWC
  arrays or PIL images).

:func:`open_frame_source` picks the right one for a path or array, and
:func:`resize_to_model_input` turns a frame into the square [0, 1] tensor the model expects,
exactly as upstream SAM 2 does for JPEG folders (PIL resize, then division by 255).
"""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
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


@dataclass
class VideoFileSource(FrameSource):
    """Frames of a video file decoded with OpenCV (``cv2.VideoCapture``).

    The frame count is established by one decoding pass when the source is opened (container
    metadata is not always exact). Sequential reads reuse the open decoder; other reads seek.
    """

    path: Path
    _num_frames: int = field(init=False, repr=False)
    _size: tuple[int, int] = field(init=False, repr=False)
    _capture: Any = field(init=False, repr=False, default=None)
    _next_index: int = field(init=False, repr=False, default=0)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    kind = "video"

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise FrameSourceError(f"video file {self.path} does not exist")
        capture = self._open()
        try:
            ok, first = capture.read()
            if not ok:
                raise FrameSourceError(f"video file {self.path} contains no decodable frame")
            count = 1
            while capture.grab():
                count += 1
        finally:
            capture.release()
        self._num_frames = count
        self._size = first.shape[:2]

    def _open(self) -> Any:
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise FrameSourceError(f"OpenCV cannot open video file {self.path}")
        return capture

    @property
    def frame_names(self) -> list[str]:
        return [f"{index:05d}" for index in range(self._num_frames)]

    def __len__(self) -> int:
        return self._num_frames

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def get(self, index: int) -> np.ndarray:
        import cv2

        index = self._check_index(index)
        with self._lock:
            if self._capture is None:
                self._capture = self._open()
                self._next_index = 0
            if index != self._next_index:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = self._capture.read()
            self._next_index = index + 1 if ok else -1
        if not ok:
            raise FrameSourceError(f"cannot decode frame {index} of video file {self.path}")
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return self._check_size(frame, f"frame {index} of video file {self.path}")

    def close(self) -> None:
        """Release the decoder (it is reopened on the next read)."""
        with self._lock:
            if self._capture is not None:
                self._capture.release()
                self._capture = None


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
