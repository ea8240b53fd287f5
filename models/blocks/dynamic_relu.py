"""Dynamic ReLU (Chen et al., 2020), driven by a token: Mobile-Former's activation.

The coefficients come from a global token instead of the pooled feature map, so the activation of every
position depends on the whole image through the token. Only the slopes are dynamic (``k = 2`` linear pieces,
no intercepts): ``y = max(a₁·x, a₂·x)`` per sample and channel.
"""

from __future__ import annotations

import torch
from torch import nn


class DynamicReLU(nn.Module):
    """``max(a₁·x, a₂·x)`` with per-sample, per-channel slopes computed from a token.

    ``h = hardsigmoid(fc2(relu(fc1(token))))`` has ``2C`` values in ``[0, 1]``; the first ``C`` give
    ``a₁ = 2·h ∈ [0, 2]``, the last ``C`` give ``a₂ = 2·h − 1 ∈ [−1, 1]`` (with ``h = ½`` everywhere it is a
    plain ReLU). ``hardsigmoid`` is ``relu6(z + 3) / 6``, which ONNX has as one ``HardSigmoid`` op. The slopes
    are ``(B, C, 1, 1)``: three elementwise ops per activation (two ``Mul`` and a ``Max``) on the feature map.

    Args:
        token_dim: width ``d`` of the driving token.
        channels: channels ``C`` of the activated feature map.
        reduction: ``fc1`` maps ``d`` to ``d // reduction``.
    """

    def __init__(self, token_dim: int, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(token_dim, token_dim // reduction)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(token_dim // reduction, 2 * channels)
        self.gate = nn.Hardsigmoid()

    def slopes(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The slopes ``(a₁, a₂)``, each ``(B, C, 1, 1)``, for tokens ``(B, d)``."""
        h = self.gate(self.fc2(self.act(self.fc1(token))))
        h = h.reshape(h.shape[0], 2 * self.channels, 1, 1)
        h1, h2 = h.split(self.channels, dim=1)
        return 2.0 * h1, 2.0 * h2 - 1.0

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.slopes(token)
        return torch.maximum(x * a1, x * a2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
