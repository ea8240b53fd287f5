"""Per-channel layer scale γ on channels-last tokens ``(..., C)`` and its fold into the projection that feeds it."""

from __future__ import annotations

import torch
from torch import nn

from .algebra import scale_output_channels


class TokenLayerScale(nn.Module):
    """``x · γ`` with ``γ`` of shape ``(C,)``, for token sequences ``(B, N, C)`` (see ``LayerScale2d`` for maps).

    Args:
        dim: channels.
        init_value: initial value of every ``γ``.
    """

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def fold_token_layer_scale(scale: nn.Module, producer: nn.Linear) -> bool:
    """Fold ``scale`` (a TokenLayerScale) into ``producer``, the linear layer whose output it alone scales.

    Args:
        scale: the layer scale, or ``nn.Identity`` if already folded.
        producer: the projection whose output channels the scale multiplies.

    Returns:
        True if a scale was folded (the caller then replaces ``scale`` with ``nn.Identity``).
    """
    if not isinstance(scale, TokenLayerScale):
        return False
    scale_output_channels(producer, scale.gamma)
    return True
