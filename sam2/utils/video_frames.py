"""A video's frames as normalized square model inputs: lazily decoded into a prefetching ring, or preloaded.

Where the raw RGB frames come from (JPEG/PNG folder, video file, arrays, live stream) is the job of
:mod:`sam2.utils.frame_sources`; this module resizes and normalizes them for the model and decides
when they are decoded.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from sam2.utils.frame_sources import FrameSource, VideoInput, open_frame_source, resize_to_model_input
from sam2.utils.transforms import IMAGENET_MEAN, IMAGENET_STD


def _normalization_tensors(
    img_mean: Sequence[float], img_std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as float32 (3, 1, 1) tensors."""
    mean = torch.tensor(img_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(img_std, dtype=torch.float32)[:, None, None]
    return mean, std


def _to_model_input(
    frame: np.ndarray,
    image_size: int,
    img_mean: torch.Tensor,
    img_std: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """An RGB frame resized, normalized on the CPU and moved to ``device``.

    Both the lazy and the preloading path use this, so a frame has the same bits either way.
    """
    image = (resize_to_model_input(frame, image_size) - img_mean) / img_std
    return image.to(device, non_blocking=True)


# Loaders whose prefetch thread may still run: closed before the interpreter shuts down, since a
# daemon thread caught inside torch during finalization aborts the process ("terminate called
# without an active exception").
_OPEN_LOADERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_loaders() -> None:
    for loader in list(_OPEN_LOADERS):
        loader.close()


class PrefetchingVideoFrames:
    """Normalized model-input frames decoded on use into a bounded ring, with read-ahead.

    ``frames[i]`` is frame ``i`` as a float32 ``(3, S, S)`` tensor on ``device`` (the CPU when
    ``offload_video_to_cpu``), bit-identical to the preloaded tensor's row. At most
    ``ring_size`` frames are held, so memory does not grow with the video's length. After each
    access a single background thread decodes up to ``prefetch`` frames ahead in the direction
    of the latest accesses (forward or reverse), so decoding overlaps the model's compute.

    An error raised while prefetching is raised again, unchanged, by the next access. The worker
    is a daemon thread that exits after ``idle_timeout`` seconds without work, so a forgotten
    loader keeps neither the process nor its memory alive; :meth:`close` stops it at once (frames
    are still served afterwards, decoded on access). Calls into ``source`` are serialized, so any
    :class:`FrameSource` may be used.
    """

    def __init__(
        self,
        source: FrameSource,
        image_size: int,
        offload_video_to_cpu: bool,
        img_mean: torch.Tensor,
        img_std: torch.Tensor,
        compute_device: torch.device,
        ring_size: int = 8,
        prefetch: int = 4,
        idle_timeout: float = 1.0,
    ) -> None:
        if not 0 <= prefetch < ring_size:
            raise ValueError(
                f"need 0 <= prefetch < ring_size, got prefetch={prefetch}, ring_size={ring_size}"
            )
        self.source = source
        self.image_size = image_size
        self.offload_video_to_cpu = offload_video_to_cpu
        self.img_mean = img_mean
        self.img_std = img_std
        self.compute_device = compute_device
        self.device = torch.device("cpu") if offload_video_to_cpu else compute_device
        self.video_height, self.video_width = source.size
        self.ring_size = ring_size
        self.prefetch = prefetch
        self.idle_timeout = idle_timeout
        #: frames decoded by the background thread, by direction relative to the access that asked
        self.prefetched = {"forward": 0, "reverse": 0}
        #: frames decoded on the caller's thread because they were neither held nor being prefetched
        self.decoded_on_access = 0
        self._num_frames = len(source)
        self._ring: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._source_lock = threading.Lock()
        self._wanted: list[tuple[int, str]] = []
        self._in_flight: int | None = None
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self._last_index: int | None = None
        self._step = 1
        self._closed = False
        _OPEN_LOADERS.add(self)

    def __len__(self) -> int:
        return self._num_frames

    @property
    def live(self) -> bool:
        """Whether the frames come from a live stream (read once, in order; its length is a capacity)."""
        return getattr(self.source, "live", False)

    def has_frame(self, index: int) -> bool:
        """Whether frame ``index`` exists (a live stream may end earlier than its capacity)."""
        has_frame = getattr(self.source, "has_frame", None)
        return 0 <= index < self._num_frames if has_frame is None else has_frame(index)

    @property
    def cached_frames(self) -> int:
        """Number of model-input frames held in the ring (at most ``ring_size``)."""
        return len(self._ring)

    @property
    def cached_indices(self) -> list[int]:
        """Indices of the frames held in the ring, in increasing order."""
        with self._lock:
            return sorted(self._ring)

    @property
    def cached_bytes(self) -> int:
        """Bytes of the model-input frames held in the ring."""
        with self._lock:
            return sum(image.numel() * image.element_size() for image in self._ring.values())

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self._num_frames <= index < self._num_frames:
            raise IndexError(f"frame index {index} out of range for {self._num_frames} frames")
        index %= self._num_frames
        with self._lock:
            self._raise_pending_error()
            if self._last_index is not None and index != self._last_index:
                self._step = 1 if index > self._last_index else -1
            self._last_index = index
            while self._in_flight == index:
                self._changed.wait()
            self._raise_pending_error()
            image = self._ring.get(index)
            if image is not None:
                self._ring.move_to_end(index)
                self._schedule(index)
                return image
            self._wanted = [wanted for wanted in self._wanted if wanted[0] != index]
        image = self._load(index)
        with self._lock:
            self.decoded_on_access += 1
            self._store(index, image)
            self._schedule(index)
        return image

    def wait_for_prefetch(self, timeout: float = 30.0) -> bool:
        """Block until the background thread has nothing left to decode; False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: not self._wanted and self._in_flight is None, timeout)

    def close(self) -> None:
        """Stop prefetching, drop the held frames and release the source's decoder."""
        with self._lock:
            self._closed = True
            self._wanted.clear()
            self._changed.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        with self._lock:
            self._ring.clear()
        close_source = getattr(self.source, "close", None)
        if close_source is not None:
            close_source()

    # ------------------------------------------------------------------ internals (lock held)

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _store(self, index: int, image: torch.Tensor) -> None:
        self._ring[index] = image
        self._ring.move_to_end(index)
        while len(self._ring) > self.ring_size:
            self._ring.popitem(last=False)

    def _schedule(self, index: int) -> None:
        """Ask the worker for the next ``prefetch`` frames in the current direction."""
        if self._closed:
            return
        direction = "forward" if self._step > 0 else "reverse"
        self._wanted.clear()
        for distance in range(1, self.prefetch + 1):
            ahead = index + distance * self._step
            if not 0 <= ahead < self._num_frames:
                break
            if ahead in self._ring:
                self._ring.move_to_end(ahead)  # keep the frames about to be used
            elif ahead != self._in_flight:
                self._wanted.append((ahead, direction))
        if not self._wanted:
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._prefetch_loop, name="frame-prefetch", daemon=True)
            self._worker.start()
        else:
            self._changed.notify_all()

    # ------------------------------------------------------------------ worker

    def _load(self, index: int) -> torch.Tensor:
        with self._source_lock:
            frame = self.source.get(index)
        return _to_model_input(frame, self.image_size, self.img_mean, self.img_std, self.device)

    def _prefetch_loop(self) -> None:
        while True:
            with self._lock:
                if not self._wanted and not self._closed:
                    self._changed.wait_for(lambda: self._wanted or self._closed, self.idle_timeout)
                if self._closed or not self._wanted:
                    self._worker = None
                    self._changed.notify_all()
                    return
                index, direction = self._wanted.pop(0)
                if index in self._ring:
                    self._changed.notify_all()
                    continue
                self._in_flight = index
            try:
                image = self._load(index)
            except BaseException as error:  # handed to the caller's thread by the next access
                with self._lock:
                    self._error = error
                    self._in_flight = None
                    self._wanted.clear()
                    self._worker = None
                    self._changed.notify_all()
                return
            with self._lock:
                self._in_flight = None
                self.prefetched[direction] += 1
                self._store(index, image)
                self._changed.notify_all()


def load_video_frames(
    video_path: VideoInput,
    image_size: int,
    offload_video_to_cpu: bool,
    img_mean: Sequence[float] = IMAGENET_MEAN,
    img_std: Sequence[float] = IMAGENET_STD,
    async_loading_frames: bool = False,
    compute_device: torch.device | str | None = None,
    stream_frames: bool = False,
    preload_frames: bool = False,
) -> tuple[torch.Tensor | PrefetchingVideoFrames, int, int]:
    """Load a video as normalized square model inputs.

    ``video_path`` may be a folder of JPEG/PNG frames, a video file (decoded with PyAV), an
    in-memory array / list of frames, or a ready :class:`FrameSource`. Each frame is resized to
    ``image_size x image_size`` (PIL, as upstream does for JPEG folders), scaled to [0, 1] and
    normalized with ``img_mean`` / ``img_std``. Frames live on ``compute_device`` (default:
    :func:`sam2.build_sam.default_device`) unless ``offload_video_to_cpu``.

    Returns ``(images, video_height, video_width)``. By default ``images`` is a
    :class:`PrefetchingVideoFrames`: frames are decoded when first used into a small ring, with
    read-ahead in the direction of playback, so memory does not grow with the video's length.
    ``async_loading_frames`` (upstream's flag) and ``stream_frames`` (this project's earlier
    flag) are accepted and mean this same lazy loading. ``preload_frames=True`` instead decodes
    every frame up front into one (T, 3, S, S) float32 tensor (upstream's default behaviour,
    about 12.6 MB per frame at 1024 px), with the same values.
    """
    if preload_frames and (async_loading_frames or stream_frames):
        raise ValueError(
            "preload_frames=True decodes every frame up front; it cannot be combined with "
            "async_loading_frames or stream_frames, which ask for lazy loading"
        )
    if compute_device is None:
        from sam2.build_sam import default_device

        compute_device = default_device()
    compute_device = torch.device(compute_device)
    source = open_frame_source(video_path)
    mean, std = _normalization_tensors(img_mean, img_std)
    video_height, video_width = source.size
    live = getattr(source, "live", False)
    if live and preload_frames:
        raise ValueError(
            "preload_frames=True cannot be used with a live stream: its frames arrive one by one"
        )
    if not preload_frames:
        # A live stream is read in order as it is processed: reading ahead would only add latency.
        frames = PrefetchingVideoFrames(
            source, image_size, offload_video_to_cpu, mean, std, compute_device, prefetch=0 if live else 4
        )
        return frames, video_height, video_width

    device = torch.device("cpu") if offload_video_to_cpu else compute_device
    images = torch.empty(len(source), 3, image_size, image_size, dtype=torch.float32, device=device)
    cpu = torch.device("cpu")
    for index in tqdm(range(len(source)), desc=f"frame loading ({source.kind})"):
        images[index] = _to_model_input(source.get(index), image_size, mean, std, cpu)
    return images, video_height, video_width
