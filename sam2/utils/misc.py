"""Small utilities shared by the predictors: attention-kernel settings, connected components,
mask post-processing, prompt bookkeeping and video loading.

Everything here runs on any device. In particular the connected-component labelling (used to
fill small holes in predicted masks) has a pure-torch path for CUDA tensors and an OpenCV path
for everything else; the optional compiled ``sam2._C`` CUDA extension is only an accelerator, never a
requirement, so post-processing behaves the same with or without it.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from threading import Thread
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sam2.utils.frame_sources import FrameSource, VideoInput, open_frame_source, resize_to_model_input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_sdpa_settings() -> tuple[bool, bool, bool]:
    """Decide which scaled-dot-product-attention kernels the attention layers may use.

    Returns ``(old_gpu, use_flash_attn, math_kernel_on)``. Without CUDA (CPU, MPS) only the math
    kernel is meaningful, so we report an "old GPU" with flash attention off.
    """
    if not torch.cuda.is_available():
        return True, False, True

    major = torch.cuda.get_device_properties(0).major
    old_gpu = major < 7
    use_flash_attn = major >= 8  # Flash Attention needs Ampere (compute capability 8.0) or newer
    if not use_flash_attn:
        warnings.warn(
            "Flash Attention is disabled as it requires a GPU with Ampere (8.0) CUDA capability.",
            category=UserWarning,
            stacklevel=2,
        )
    torch_version = tuple(int(part) for part in torch.__version__.split(".")[:2])
    if torch_version < (2, 2):
        warnings.warn(
            f"PyTorch {torch.__version__} has no Flash Attention v2; PyTorch 2.2+ may be faster.",
            category=UserWarning,
            stacklevel=2,
        )
    # Flash Attention v1 (before PyTorch 2.2) cannot handle every shape, so keep the math kernel.
    math_kernel_on = torch_version < (2, 2) or not use_flash_attn
    return old_gpu, use_flash_attn, math_kernel_on


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


def _model_input_frame(
    source: FrameSource,
    index: int,
    image_size: int,
    img_mean: torch.Tensor,
    img_std: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Frame ``index`` resized, normalized (on CPU) and moved to ``device``."""
    image = (resize_to_model_input(source.get(index), image_size) - img_mean) / img_std
    return image.to(device, non_blocking=True)


class AsyncVideoFrameLoader:
    """Lazily loaded, normalized model-input frames, filled by a background thread.

    Frame 0 is loaded immediately (it fixes the video size and is where users usually click);
    the other frames are loaded in a daemon thread so a session can start at once. Indexing a
    frame the thread has not reached yet loads it on the spot. An error in the thread is
    re-raised on the next access.
    """

    def __init__(
        self,
        source: FrameSource,
        image_size: int,
        offload_video_to_cpu: bool,
        img_mean: torch.Tensor,
        img_std: torch.Tensor,
        compute_device: torch.device,
    ) -> None:
        self.source = source
        self.image_size = image_size
        self.offload_video_to_cpu = offload_video_to_cpu
        self.img_mean = img_mean
        self.img_std = img_std
        self.compute_device = compute_device
        self.images: list[torch.Tensor | None] = [None] * len(source)
        self.exception: BaseException | None = None
        self.video_height, self.video_width = source.size
        self[0]
        self.thread = Thread(target=self._load_all, daemon=True)
        self.thread.start()

    def _load_all(self) -> None:
        try:
            for index in range(len(self.images)):
                self[index]
        except Exception as error:  # surfaced to the main thread by __getitem__
            self.exception = error

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.exception is not None:
            raise RuntimeError("Failure in frame loading thread") from self.exception
        image = self.images[index]
        if image is not None:
            return image
        device = torch.device("cpu") if self.offload_video_to_cpu else self.compute_device
        image = _model_input_frame(self.source, index, self.image_size, self.img_mean, self.img_std, device)
        self.images[index] = image
        return image

    def __len__(self) -> int:
        return len(self.images)


class StreamingVideoFrames:
    """Model-input frames decoded on access, keeping only the ``cache_size`` most recent ones.

    Memory stays constant in the video length (propagation reads each frame once, in order);
    revisiting an evicted frame decodes it again.
    """

    def __init__(
        self,
        source: FrameSource,
        image_size: int,
        offload_video_to_cpu: bool,
        img_mean: torch.Tensor,
        img_std: torch.Tensor,
        compute_device: torch.device,
        cache_size: int = 2,
    ) -> None:
        self.source = source
        self.image_size = image_size
        self.device = torch.device("cpu") if offload_video_to_cpu else compute_device
        self.img_mean = img_mean
        self.img_std = img_std
        self.cache_size = cache_size
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self._cache.get(index)
        if image is None:
            image = _model_input_frame(
                self.source, index, self.image_size, self.img_mean, self.img_std, self.device
            )
            self._cache[index] = image
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return image


def load_video_frames(
    video_path: VideoInput,
    image_size: int,
    offload_video_to_cpu: bool,
    img_mean: Sequence[float] = IMAGENET_MEAN,
    img_std: Sequence[float] = IMAGENET_STD,
    async_loading_frames: bool = False,
    compute_device: torch.device | str | None = None,
    stream_frames: bool = False,
) -> tuple[torch.Tensor | AsyncVideoFrameLoader | StreamingVideoFrames, int, int]:
    """Load a video as normalized square model inputs.

    ``video_path`` may be a folder of JPEG/PNG frames, a video file decoded with OpenCV, an
    in-memory array / list of frames, or a ready :class:`FrameSource`. Each frame is resized to
    ``image_size x image_size`` (PIL, as upstream does for JPEG folders), scaled to [0, 1] and
    normalized with ``img_mean`` / ``img_std``. Frames live on ``compute_device`` unless
    ``offload_video_to_cpu``. Returns ``(images, video_height, video_width)`` where ``images`` is
    a (T, 3, S, S) float32 tensor, or an :class:`AsyncVideoFrameLoader` when
    ``async_loading_frames`` is set, or a :class:`StreamingVideoFrames` (constant memory, frames
    decoded when used) with ``stream_frames``. ``compute_device`` defaults to CUDA when available.
    """
    if compute_device is None:
        compute_device = "cuda" if torch.cuda.is_available() else "cpu"
    compute_device = torch.device(compute_device)
    source = open_frame_source(video_path)
    mean, std = _normalization_tensors(img_mean, img_std)
    video_height, video_width = source.size
    if stream_frames:
        frames = StreamingVideoFrames(source, image_size, offload_video_to_cpu, mean, std, compute_device)
        return frames, video_height, video_width
    if async_loading_frames:
        loader = AsyncVideoFrameLoader(source, image_size, offload_video_to_cpu, mean, std, compute_device)
        return loader, video_height, video_width

    images = torch.empty(len(source), 3, image_size, image_size, dtype=torch.float32)
    for index in tqdm(range(len(source)), desc=f"frame loading ({source.kind})"):
        images[index] = resize_to_model_input(source.get(index), image_size)
    if not offload_video_to_cpu:
        images, mean, std = images.to(compute_device), mean.to(compute_device), std.to(compute_device)
    images -= mean
    images /= std
    return images, video_height, video_width
