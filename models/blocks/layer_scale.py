"""Per-channel layer scale γ and its fold into the projection that feeds it."""

from __future__ import annotations

import torch
from torch import nn

from .algebra import scale_output_channels


class LayerScale2d(nn.Module):
    """``x · γ`` with ``γ`` of shape ``(C, 1, 1)``.

    Args:
        dim: channels.
        init_value: initial value of every ``γ``.
    """

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def fold_layer_scale(scale: nn.Module, producer: nn.Conv2d | nn.Linear) -> bool:
    """Fold ``scale`` (a LayerScale2d) into ``producer``, the conv/linear whose output it alone scales.

    Args:
        scale: the layer scale, or ``nn.Identity`` if already folded.
        producer: the projection whose output channels the scale multiplies.

    Returns:
        True if a scale was folded (the caller then replaces ``scale`` with ``nn.Identity``).
    """
    if not isinstance(scale, LayerScale2d):
        return False
    scale_output_channels(producer, scale.gamma)
    return True
