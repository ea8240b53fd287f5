"""MobileNetV2 inverted residual (MV2): 1×1 expand, depthwise k×k, 1×1 linear projection."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .conv_norm import ConvNorm


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never below ``round_limit·value``.

    Args:
        value: the raw channel count (e.g. ``in_chs · expansion``).
        divisor: the multiple to round to.
        round_limit: if rounding lost more than ``1 − round_limit`` of ``value``, add one ``divisor``.

    Returns:
        The rounded channel count (at least ``divisor``).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


class InvertedResidual(nn.Module):
    """``x + pwl(dw(pw(x)))`` (skip only when the shape is kept); every conv is a :class:`ConvNorm`.

    ``conv_pw`` (1×1, activation) expands to ``make_divisible(in_chs · expansion)`` channels,
    ``conv_dw`` (depthwise k×k, stride, activation) mixes space, ``conv_pwl`` (1×1, no activation)
    projects back. Each conv's BN has the conv as its only producer, so the fuse stage folds all three.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: stride of the depthwise conv.
        expansion: hidden channels relative to ``in_chs``.
        kernel_size: depthwise kernel.
        act_layer: activation factory of the two first convs.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        expansion: float = 4.0,
        kernel_size: int = 3,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        hidden = make_divisible(in_chs * expansion)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = ConvNorm(in_chs, hidden, 1, act_layer=act_layer)
        self.conv_dw = ConvNorm(hidden, hidden, kernel_size, stride, groups=hidden, act_layer=act_layer)
        self.conv_pwl = ConvNorm(hidden, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + out if self.has_skip else out
