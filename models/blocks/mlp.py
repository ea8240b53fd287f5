"""Feed-forward networks: the two-layer MLP (token or channels-first layout) and FastViT's ConvFFN."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .conv_norm import ConvNorm


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``.

    Args:
        dim: input and output channels.
        hidden: channels after the expansion.
        act_layer: activation factory.
        channels_first: ``fc1``/``fc2`` are 1×1 ``nn.Conv2d`` on ``(B, C, ...)`` maps; otherwise
            ``nn.Linear`` on channels-last tokens ``(..., C)``.
    """

    def __init__(
        self, dim: int, hidden: int, act_layer: Callable[[], nn.Module] = nn.GELU, channels_first: bool = False
    ) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if channels_first else nn.Linear
        self.fc1 = layer(dim, hidden)
        self.act = act_layer()
        self.fc2 = layer(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvMlp(Mlp):
    """FastViT's ConvFFN: depthwise 7×7 conv-BN, then the channels-first :class:`Mlp`.

    Args:
        dim: input and output channels.
        hidden: channels after the expansion.
        act_layer: activation factory.
    """

    def __init__(self, dim: int, hidden: int, act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__(dim, hidden, act_layer, channels_first=True)
        self.conv = ConvNorm(dim, dim, 7, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.conv(x))
