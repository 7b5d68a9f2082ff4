"""Image trunks from the timm library (EdgeTAM's RepViT), in the trunk interface of SAM 2.

A trunk returns one feature map per selected stage, finest first, and exposes ``channel_list``
(coarsest first) for the FPN neck, like :class:`~sam2.modeling.backbones.hieradet.Hiera`.
timm is an optional dependency (``pip install 'sam2long[edgetam]'``), imported when built.
"""

from __future__ import annotations

from typing import List, Sequence

from torch import Tensor, nn


def _stage_index(name: str) -> int:
    """``"layer2"`` -> 2 (the config names stages as timm's ``out_indices``)."""
    if not name.startswith("layer") or not name[len("layer") :].isdigit():
        raise ValueError(f"feature names must look like 'layer<N>', got {name!r}")
    return int(name[len("layer") :])


class TimmBackbone(nn.Module):
    """A timm model in ``features_only`` mode; its weights live under ``body.``.

    ``pretrained`` defaults to False: SAM 2-family checkpoints carry the trunk weights, so
    nothing is downloaded at build time (the official class always asks timm for them).
    """

    def __init__(self, name: str, features: Sequence[str], pretrained: bool = False) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"the {name!r} trunk needs timm (pip install timm, or the package's [edgetam] extra)"
            ) from err
        self.body = timm.create_model(
            name,
            pretrained=pretrained,
            in_chans=3,
            features_only=True,
            out_indices=tuple(_stage_index(f) for f in features),
        )
        self.channel_list = list(self.body.feature_info.channels())[::-1]

    def forward(self, x: Tensor) -> List[Tensor]:
        """``[B, 3, H, W]`` -> one map per selected stage, finest first."""
        return list(self.body(x))
