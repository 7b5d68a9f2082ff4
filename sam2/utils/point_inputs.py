"""Point prompts in the form the SAM 2 heads take: ``{"point_coords": (B, P, 2), "point_labels": (B, P)}``."""

from __future__ import annotations

import torch


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
