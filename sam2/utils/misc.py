"""Small utilities shared by the predictors: connected components, mask post-processing, prompt bookkeeping and video loading.

Everything here runs on any device. In particular the connected-component labelling (used to
fill small holes in predicted masks) has a pure-torch path for CUDA tensors and an OpenCV path
for everything else; the optional compiled ``sam2._C`` CUDA extension is only an accelerator, never a
requirement, so post-processing behaves the same with or without it.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sam2.utils.frame_sources import FrameSource, VideoInput, open_frame_source, resize_to_model_input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Connected components
# --------------------------------------------------------------------------------------------


@functools.cache
def _compiled_cuda_extension() -> Any:
    """The optional compiled extension ``sam2._C`` if it was built, else None (looked up once)."""
    try:
        from sam2 import _C  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _C


def _canonical_labels_and_areas(
    component_ids: torch.Tensor, foreground: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn arbitrary per-pixel component ids into canonical labels and per-pixel areas.

    ``component_ids`` and ``foreground`` are (B, H*W); ids are any non-negative integers below
    H*W that are equal exactly within a component. The canonical label of a component is one plus
    the raster index of its first pixel, so labels do not depend on the labelling algorithm.
    """
    batch, num_pixels = component_ids.shape
    ids = torch.where(foreground, component_ids, 0).long()
    pixel_index = torch.arange(num_pixels, device=ids.device).expand(batch, num_pixels)
    first_pixel = torch.full((batch, num_pixels), num_pixels, dtype=torch.long, device=ids.device)
    first_pixel.scatter_reduce_(1, ids, torch.where(foreground, pixel_index, num_pixels), reduce="amin")
    area = torch.zeros((batch, num_pixels), dtype=torch.long, device=ids.device)
    area.scatter_add_(1, ids, foreground.long())
    labels = torch.where(foreground, first_pixel.gather(1, ids) + 1, 0)
    areas = torch.where(foreground, area.gather(1, ids), 0)
    return labels.to(torch.int32), areas.to(torch.int32)


def _component_ids_opencv(foreground: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel component ids of (B, H*W) boolean CPU masks, labelled by OpenCV."""
    import cv2

    planes = foreground.reshape(-1, height, width).to(torch.uint8).numpy()
    ids = np.empty(planes.shape, dtype=np.int32)
    for index, plane in enumerate(planes):
        _, ids[index] = cv2.connectedComponents(plane, connectivity=8, ltype=cv2.CV_32S)
    return torch.from_numpy(ids.reshape(foreground.shape))


def _neighbourhood_max(values: torch.Tensor) -> torch.Tensor:
    """Maximum over each pixel's 3x3 neighbourhood of a (B, H, W) integer tensor (zero padding)."""
    height, width = values.shape[-2:]
    padded = torch.nn.functional.pad(values, (1, 1, 1, 1))
    result = values.clone()
    for dy in range(3):
        for dx in range(3):
            torch.maximum(result, padded[:, dy : dy + height, dx : dx + width], out=result)
    return result


def _component_ids_torch(foreground: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel component ids of (B, H*W) boolean masks on any device, in pure torch.

    Each foreground pixel starts with a score ``H*W - raster_index`` and repeatedly takes the
    largest score in its 8-neighbourhood, so a component converges to the score of its first
    pixel. Pointer jumping (a pixel adopts the current score of the pixel its score came from)
    shortens long chains, so convergence takes far fewer steps than the component's diameter.
    """
    batch, num_pixels = foreground.shape
    pixel_index = torch.arange(num_pixels, device=foreground.device)
    score = torch.where(foreground, num_pixels - pixel_index, 0)
    while True:
        spread = _neighbourhood_max(score.view(batch, height, width)).view(batch, num_pixels)
        spread = torch.where(foreground, spread, 0)
        source_pixel = (num_pixels - spread).clamp(max=num_pixels - 1)
        jumped = torch.where(foreground, spread.gather(1, source_pixel), 0)
        if torch.equal(jumped, score):
            break
        score = jumped
    return torch.where(foreground, num_pixels - score, 0)


def get_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label the 8-connected components of binary masks of shape (N, 1, H, W).

    Returns ``(labels, areas)``, both int32 tensors of the input's shape on its device. Background
    pixels get label 0 and area 0; every foreground pixel gets a positive label shared exactly by
    the pixels of its component, and the pixel count of that component as its area.

    CUDA tensors are labelled on the GPU (with the compiled ``sam2._C`` kernel when it was built,
    whose label values differ but carry the same meaning, else in pure torch); other tensors are
    labelled by OpenCV on the CPU and the results moved back to their device.
    """
    binary = mask.to(torch.uint8).contiguous()
    height, width = binary.shape[-2:]
    if binary.is_cuda:
        extension = _compiled_cuda_extension()
        if extension is not None:
            return extension.get_connected_componnets(binary)
        foreground = binary.reshape(-1, height * width).bool()
        component_ids = _component_ids_torch(foreground, height, width)
    else:
        foreground = binary.reshape(-1, height * width).bool().cpu()
        component_ids = _component_ids_opencv(foreground, height, width)
    labels, areas = _canonical_labels_and_areas(component_ids, foreground)
    return labels.view(binary.shape).to(mask.device), areas.view(binary.shape).to(mask.device)


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int, max_sprinkle_area: int = 0) -> torch.Tensor:
    """Fill small background holes (and optionally remove small foreground sprinkles) in mask logits.

    ``mask`` holds logits of shape (N, 1, H, W); foreground is ``mask > 0``. Background components
    of at most ``max_area`` pixels get the small positive score 0.1 (they become foreground). When
    ``max_sprinkle_area > 0``, foreground components of at most that many pixels then get the small
    negative score -0.1. Works on every device (see :func:`get_connected_components`).
    """
    if max_area <= 0:
        raise ValueError(f"max_area must be positive, got {max_area}")
    labels, areas = get_connected_components(mask <= 0)
    is_hole = (labels > 0) & (areas <= max_area)
    mask = torch.where(is_hole, 0.1, mask)
    if max_sprinkle_area > 0:
        labels, areas = get_connected_components(mask > 0)
        is_sprinkle = (labels > 0) & (areas <= max_sprinkle_area)
        mask = torch.where(is_sprinkle, -0.1, mask)
    return mask


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes around boolean masks of shape (B, 1, H, W).

    Returns int32 boxes of shape (B, 1, 4) as ``(x_min, y_min, x_max, y_max)`` in inclusive pixel
    coordinates; an empty mask gives ``(W, H, -1, -1)``.
    """
    height, width = masks.shape[-2:]
    device = masks.device
    columns_hit = masks.any(dim=-2)  # (B, 1, W)
    rows_hit = masks.any(dim=-1)  # (B, 1, H)
    xs = torch.arange(width, device=device, dtype=torch.int32)
    ys = torch.arange(height, device=device, dtype=torch.int32)
    x_min = torch.where(columns_hit, xs, width).amin(dim=-1)
    x_max = torch.where(columns_hit, xs, -1).amax(dim=-1)
    y_min = torch.where(rows_hit, ys, height).amin(dim=-1)
    y_max = torch.where(rows_hit, ys, -1).amax(dim=-1)
    return torch.stack((x_min, y_min, x_max, y_max), dim=-1).to(torch.int32)


def concat_points(
    old_point_inputs: dict[str, torch.Tensor] | None, new_points: torch.Tensor, new_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Append new clicks (B, P, 2) and their labels (B, P) after any earlier ones."""
    if old_point_inputs is None:
        return {"point_coords": new_points, "point_labels": new_labels}
    return {
        "point_coords": torch.cat([old_point_inputs["point_coords"], new_points], dim=1),
        "point_labels": torch.cat([old_point_inputs["point_labels"], new_labels], dim=1),
    }


# --------------------------------------------------------------------------------------------
# Video loading
# --------------------------------------------------------------------------------------------


def _normalization_tensors(
    img_mean: Sequence[float], img_std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as float32 (3, 1, 1) tensors."""
    mean = torch.tensor(img_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(img_std, dtype=torch.float32)[:, None, None]
    return mean, std


#: Propagation gives freed heap memory back to the OS every this many frames (see release_free_heap).
HEAP_RELEASE_EVERY = 64


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim``; False where unavailable).

    A long propagation keeps thousands of small tensors alive for a while (stored outputs, pathway
    memories) among short-lived per-frame ones; glibc keeps the pages freed between them, so the
    process's resident memory would grow with heap fragmentation although the memory in use does not.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


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


#: upstream's name of the lazy frame loader, which :class:`PrefetchingVideoFrames` replaces
AsyncVideoFrameLoader = PrefetchingVideoFrames


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
