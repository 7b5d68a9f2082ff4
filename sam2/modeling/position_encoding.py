"""Positional encodings used across SAM 2.

Three families live here:

* :class:`PositionEmbeddingSine` -- the fixed 2D sine/cosine grid encoding (DETR style) used by the
  FPN neck and the memory encoder, plus helpers to encode individual boxes and points.
* :class:`PositionEmbeddingRandom` -- random Fourier features used by the SAM prompt encoder.
* Axial rotary embeddings (:func:`compute_axial_cis`, :func:`apply_rotary_enc`) used by the
  RoPE attention layers of the memory attention module.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn


def _interleaved_sin_cos(positions: torch.Tensor, inv_dims: torch.Tensor) -> torch.Tensor:
    """Encode scaled positions as ``[sin(p/d0), cos(p/d0), sin(p/d1), cos(p/d1), ...]``.

    ``positions`` may have any shape; the result gains a trailing axis of size ``2 * len(inv_dims)``.
    ``inv_dims`` holds one divisor per sin/cos pair.
    """
    angles = positions.unsqueeze(-1) / inv_dims
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Fixed 2D sine/cosine positional encoding for feature maps.

    Half of the ``num_pos_feats`` channels encode the row coordinate, the other half the column
    coordinate. Grids are cached per ``(H, W)`` because the same feature sizes recur every frame.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: int = 10000,
        normalize: bool = True,
        scale: Optional[float] = None,
        warmup_cache: bool = True,
        image_size: int = 1024,
        strides: Tuple[int, ...] = (4, 8, 16, 32),
    ) -> None:
        """
        Args:
            num_pos_feats: total number of output channels (must be even).
            temperature: base of the geometric frequency progression.
            normalize: map grid coordinates to ``(0, scale]`` before encoding.
            scale: coordinate scale used with ``normalize`` (defaults to ``2 * pi``).
            warmup_cache: precompute grids for the usual feature sizes when CUDA is available
                (helps ``torch.compile`` by avoiding graph breaks on the first call).
            image_size: input resolution used for the warm-up.
            strides: feature strides used for the warm-up.
        """
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        # Channels per axis.
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.cache: Dict[Tuple[int, int], torch.Tensor] = {}

        if warmup_cache and torch.cuda.is_available():
            # The device models are built on by default (the local rank's GPU under torchrun); a
            # model used elsewhere moves the cache on first use (``_pe``).
            from sam2.build_sam import default_device

            device = torch.device(default_device())
            for stride in strides:
                side = image_size // stride
                self._pe(1, device, side, side)

    def _pair_divisors(self, device: torch.device) -> torch.Tensor:
        """Divisor ``temperature ** (2k / num_pos_feats)`` for each sin/cos pair ``k``."""
        exponents = (
            torch.arange(0, self.num_pos_feats, 2, dtype=torch.float32, device=device) / self.num_pos_feats
        )
        return self.temperature**exponents

    def _encode_xy(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode 1D tensors of normalized x and y coordinates, each to ``[N, num_pos_feats]``."""
        if x.ndim != 1 or y.ndim != 1 or len(x) != len(y):
            raise ValueError("x and y must be 1D tensors of equal length")
        divisors = self._pair_divisors(x.device)
        pos_x = _interleaved_sin_cos(x * self.scale, divisors)
        pos_y = _interleaved_sin_cos(y * self.scale, divisors)
        return pos_x, pos_y

    @torch.no_grad()
    def encode_boxes(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor:
        """Encode boxes given by normalized centers ``(x, y)`` and raw sizes ``(w, h)``."""
        pos_x, pos_y = self._encode_xy(x, y)
        return torch.cat((pos_y, pos_x, h[:, None], w[:, None]), dim=1)

    # Older name kept for callers that still use it.
    encode = encode_boxes

    @torch.no_grad()
    def encode_points(self, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Encode ``[B, N]`` normalized point coordinates and append their labels."""
        if not (x.shape == y.shape == labels.shape) or x.ndim != 2:
            raise ValueError("x, y and labels must share the same [B, N] shape")
        batch, num = x.shape
        pos_x, pos_y = self._encode_xy(x.flatten(), y.flatten())
        pos_x = pos_x.reshape(batch, num, -1)
        pos_y = pos_y.reshape(batch, num, -1)
        return torch.cat((pos_y, pos_x, labels[:, :, None]), dim=2)

    def _grid(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Build the ``[C, H, W]`` encoding of an ``H x W`` grid (1-based coordinates)."""
        rows = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        cols = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        if self.normalize:
            eps = 1e-6
            rows = rows / (rows[-1:] + eps) * self.scale
            cols = cols / (cols[-1:] + eps) * self.scale
        divisors = self._pair_divisors(device)
        pos_rows = _interleaved_sin_cos(rows, divisors)  # [H, C/2]
        pos_cols = _interleaved_sin_cos(cols, divisors)  # [W, C/2]
        half = pos_rows.shape[-1]
        grid = torch.cat(
            (
                pos_rows[:, None, :].expand(height, width, half),
                pos_cols[None, :, :].expand(height, width, half),
            ),
            dim=-1,
        )
        return grid.permute(2, 0, 1)

    @torch.no_grad()
    def _pe(self, B: int, device: torch.device, *cache_key: int) -> torch.Tensor:
        """Return the ``[B, C, H, W]`` encoding for ``cache_key == (H, W)``, using the cache."""
        height, width = cache_key
        key = (height, width)
        cached = self.cache.get(key)
        if cached is None:
            cached = self.cache[key] = self._grid(height, width, device)
        elif cached.device != torch.device(device):
            # The cache follows the model's device instead of being copied there on every call.
            cached = self.cache[key] = cached.to(device)
        return cached[None].repeat(B, 1, 1, 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the encoding matching the batch and spatial size of a ``[B, C, H, W]`` map."""
        return self._pe(x.shape[0], x.device, x.shape[-2], x.shape[-1])


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random (Gaussian) spatial frequencies, as in SAM."""

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix",
            scale * torch.randn((2, num_pos_feats)),
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode ``[..., 2]`` coordinates in ``[0, 1]`` to ``[..., 2 * num_pos_feats]``."""
        centered = 2 * coords - 1
        projected = centered @ self.positional_encoding_gaussian_matrix
        projected = 2 * np.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Return the ``[C, H, W]`` encoding of pixel centers on an ``H x W`` grid."""
        h, w = size
        device: Any = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        coords = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)],
            dim=-1,
        )
        return self._pe_encoding(coords).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """Encode ``[B, N, 2]`` pixel ``(x, y)`` coordinates of an image of ``(H, W)``."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))


# --- Axial rotary position encoding (RoPE) for 2D token grids ---------------------------------


def init_t_xy(end_x: int, end_y: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Column and row index of every token of a row-major ``end_y x end_x`` grid, as floats."""
    t_x = torch.arange(end_x, dtype=torch.float32).repeat(end_y)
    t_y = torch.arange(end_y, dtype=torch.float32).repeat_interleave(end_x)
    return t_x, t_y


def compute_axial_cis(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotation factors for 2D axial RoPE.

    Returns a ``[end_x * end_y, dim // 2]`` complex tensor: the first ``dim // 4`` columns rotate by
    the token's column index, the last ``dim // 4`` by its row index.
    """
    exponents = torch.arange(0, dim, 4)[: dim // 4].float() / dim
    freqs = 1.0 / (theta**exponents)
    t_x, t_y = init_t_xy(end_x, end_y)
    angles_x = torch.outer(t_x, freqs)
    angles_y = torch.outer(t_y, freqs)
    cis_x = torch.polar(torch.ones_like(angles_x), angles_x)
    cis_y = torch.polar(torch.ones_like(angles_y), angles_y)
    return torch.cat([cis_x, cis_y], dim=-1)


def reshape_for_broadcast(freqs_cis: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View ``[L, D]`` rotation factors so they broadcast over the leading dims of ``x``."""
    if freqs_cis.shape != (x.shape[-2], x.shape[-1]):
        raise ValueError(f"freqs_cis shape {tuple(freqs_cis.shape)} does not match {tuple(x.shape[-2:])}")
    shape = [1] * (x.ndim - 2) + [x.shape[-2], x.shape[-1]]
    return freqs_cis.view(*shape)


def _as_complex_pairs(t: torch.Tensor) -> torch.Tensor:
    """View the last dim of a real tensor as consecutive (real, imag) pairs."""
    return torch.view_as_complex(t.float().reshape(*t.shape[:-1], -1, 2))


def apply_rotary_enc(
    xq: torch.Tensor,
    xk: torch.Tensor,
    freqs_cis: torch.Tensor,
    repeat_freqs_k: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys ``[B, heads, L, D]`` by the RoPE factors ``freqs_cis``.

    With ``repeat_freqs_k`` the keys may be several frames long (``Lk = r * Lq``); the factors are
    then tiled ``r`` times along the sequence. Empty keys are returned untouched.
    """
    q_c = _as_complex_pairs(xq)
    freqs = reshape_for_broadcast(freqs_cis, q_c)
    q_out = torch.view_as_real(q_c * freqs).flatten(3).type_as(xq).to(xq.device)
    if xk.shape[-2] == 0:
        return q_out, xk

    k_c = _as_complex_pairs(xk)
    if repeat_freqs_k:
        reps = k_c.shape[-2] // q_c.shape[-2]
        # expand + flatten instead of Tensor.repeat, which lacks complex support on some backends
        freqs = freqs.unsqueeze(2).expand(-1, -1, reps, -1, -1).flatten(2, 3)
    k_out = torch.view_as_real(k_c * freqs).flatten(3).type_as(xk).to(xk.device)
    return q_out, k_out


def apply_rotary_enc_per_frame(x: torch.Tensor, freqs_cis: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Rotate keys ``[B, heads, L, D]`` made of ``num_frames`` equal-length frames (EdgeTAM).

    Each frame holds ``L / num_frames`` tokens of which the *last* ``freqs_cis.shape[0]`` (a 2D
    latent grid) are rotated by ``freqs_cis``; any tokens before them in the frame (global
    latents) are left as they are. ``num_frames == 0`` requires ``L == 0``.
    """
    if num_frames == 0 and x.shape[-2] != 0:
        raise ValueError("keys to rotate but num_frames == 0")
    if x.shape[-2] == 0:
        return x
    b, heads, length, dim = x.shape
    if length % num_frames != 0:
        raise ValueError(f"{length} keys do not split into {num_frames} frames")
    per_frame = length // num_frames
    n_rope = freqs_cis.shape[0]
    n_plain = per_frame - n_rope
    if n_plain < 0:
        raise ValueError(f"frames of {per_frame} tokens are shorter than the {n_rope} rotated ones")
    frames = x.view(b, heads, num_frames, per_frame, dim)
    rot = _as_complex_pairs(frames[..., n_plain:, :])  # [B, heads, F, n_rope, D/2]
    shape = [1] * (rot.ndim - 2) + [rot.shape[-2], rot.shape[-1]]
    if tuple(freqs_cis.shape) != (rot.shape[-2], rot.shape[-1]):
        raise ValueError(f"freqs_cis shape {tuple(freqs_cis.shape)} does not match {tuple(rot.shape[-2:])}")
    rotated = torch.view_as_real(rot * freqs_cis.view(*shape)).flatten(4).type_as(x).to(x.device)
    if n_plain == 0:
        return rotated.reshape(b, heads, length, dim)
    return torch.cat((frames[..., :n_plain, :], rotated), dim=3).reshape(b, heads, length, dim)
