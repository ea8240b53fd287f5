"""Squeeze-and-excitation channel gate."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """``x · sigmoid(fc2(relu(fc1(mean(x)))))`` with 1×1 convs ``fc1``/``fc2``.

    Args:
        channels: channels of the gated tensor.
        reduced: channels of the bottleneck.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)
