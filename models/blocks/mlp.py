"""Convolutional feed-forward network (FastViT's ConvFFN)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .conv_norm import ConvNorm


class ConvMlp(nn.Module):
    """Depthwise 7×7 conv-BN, then 1×1 expand, activation, 1×1 project.

    Args:
        dim: input and output channels.
        hidden: channels after the expansion.
        act_layer: activation factory.
    """

    def __init__(self, dim: int, hidden: int, act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.conv = ConvNorm(dim, dim, 7, groups=dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))
