"""ConvNorm: a conv followed by BatchNorm, kept as two children so weights map one-to-one."""

from __future__ import annotations

import torch
from torch import nn

from .algebra import fold_bn


class ConvNorm(nn.Module):
    """``bn(conv(x))``; after the fuse stage ``bn`` is ``nn.Identity`` and ``conv`` carries the bias.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel size; padding keeps the spatial size (``k // 2``).
        stride: conv stride.
        groups: conv groups.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the equivalent single conv's ``(weight, bias)``, BatchNorm folded in."""
        return fold_bn(self.conv.weight, self.conv.bias, self.bn)
