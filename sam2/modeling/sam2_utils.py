"""Small building blocks shared by the SAM 2 heads and the video memory modules."""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Mapping, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def select_closest_cond_frames(
    frame_idx: int, cond_frame_outputs: Mapping[int, Any], max_cond_frame_num: int
) -> Tuple[Dict[int, Any], Dict[int, Any]]:
    """Pick at most ``max_cond_frame_num`` conditioning frames nearest in time to ``frame_idx``.

    Always prefers the nearest frame strictly before ``frame_idx`` and the nearest frame at or
    after it, then fills the remaining slots by temporal distance. ``-1`` means "no limit".
    Returns ``(selected, unselected)`` dicts with the same keys/values as the input.
    """
    if max_cond_frame_num == -1 or len(cond_frame_outputs) <= max_cond_frame_num:
        return cond_frame_outputs, {}
    if max_cond_frame_num < 2:
        raise ValueError("at least 2 conditioning frames must be allowed")

    chosen: Dict[int, Any] = {}
    earlier = [t for t in cond_frame_outputs if t < frame_idx]
    later = [t for t in cond_frame_outputs if t >= frame_idx]
    if earlier:
        t_prev = max(earlier)
        chosen[t_prev] = cond_frame_outputs[t_prev]
    if later:
        t_next = min(later)
        chosen[t_next] = cond_frame_outputs[t_next]

    # Stable sort keeps dict order among ties, so the fill-up order is deterministic.
    rest = sorted((t for t in cond_frame_outputs if t not in chosen), key=lambda t: abs(t - frame_idx))
    for t in rest[: max_cond_frame_num - len(chosen)]:
        chosen[t] = cond_frame_outputs[t]
    dropped = {t: v for t, v in cond_frame_outputs.items() if t not in chosen}
    return chosen, dropped


def get_1d_sine_pe(pos_inds: Tensor, dim: int, temperature: float = 10000) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) 1D positions: ``[..., dim]`` as ``[sin | cos]``."""
    half = dim // 2
    idx = torch.arange(half, dtype=torch.float32, device=pos_inds.device)
    freqs = temperature ** (2 * (idx // 2) / half)
    angles = pos_inds.unsqueeze(-1) / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def apply_non_overlapping_constraints(pred_masks: Tensor) -> Tensor:
    """Keep, at each pixel, only the highest-scoring object; clamp the others to at most -10.

    ``pred_masks`` is ``[N, 1, H, W]`` with one row per object (sigmoid(-10) ~= 4.5e-5). This is
    the one non-overlap rule of the repository: SAM 2's outputs and memories and the dataset tools
    all use it.
    """
    num_objects = pred_masks.size(0)
    if num_objects == 1:
        return pred_masks
    winner = torch.argmax(pred_masks, dim=0, keepdim=True)
    obj_ids = torch.arange(num_objects, device=pred_masks.device)[:, None, None, None]
    keep = winner == obj_ids
    return torch.where(keep, pred_masks, torch.clamp(pred_masks, max=-10.0))


_ACTIVATIONS: Dict[str, Callable[..., Tensor]] = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def get_activation_fn(activation: str) -> Callable[..., Tensor]:
    """Map an activation name (``relu``/``gelu``/``glu``) to its functional form."""
    try:
        return _ACTIVATIONS[activation]
    except KeyError:
        raise RuntimeError(f"activation should be relu/gelu/glu, not {activation}.") from None


def get_clones(module: nn.Module, N: int) -> nn.ModuleList:
    """``N`` independent deep copies of ``module`` (separate parameters)."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(N))


class DropPath(nn.Module):
    """Stochastic depth: randomly zero whole samples of a residual branch during training."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if self.scale_by_keep and keep > 0.0:
            mask.div_(keep)
        return x * mask


class MLP(nn.Module):
    """Plain stack of ``num_layers`` linear layers with an activation between them.

    Parameters live in ``layers.{i}`` so checkpoints of the reference model load unchanged.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: Type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output
        self.act = activation()

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerScale(nn.Module):
    """Learnt per-channel scale ``gamma`` of a residual branch (ViT blocks with ``init_values``)."""

    def __init__(self, dim: int, init_values: Union[float, Tensor] = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (per spatial position)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        centered = x - mean
        var = centered.pow(2).mean(1, keepdim=True)
        normed = centered / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * normed + self.bias[:, None, None]
