"""ReparamLargeKernelConv: a large k×k conv-BN plus a small conv-BN, merged into one k×k conv."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .algebra import conv_like, pad_kernel
from .base import MergeCount, Reparameterizable
from .conv_norm import ConvNorm


class ReparamLargeKernelConv(Reparameterizable):
    """``act(se(large(x) + small(x)))``, one conv after ``reparameterize``.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: the large kernel.
        stride: stride of both branches.
        groups: groups of both branches.
        small_kernel: the small kernel (``None``: large branch only).
        se: optional squeeze-excitation module after the merge.
        act_layer: activation factory or ``None`` (FastViT's patch embed has none here).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        groups: int,
        small_kernel: int | None = 3,
        se: nn.Module | None = None,
        act_layer: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.reparam_conv: nn.Conv2d | None = None
        self.large_conv = ConvNorm(in_chs, out_chs, kernel_size, stride, groups)
        self.small_conv = ConvNorm(in_chs, out_chs, small_kernel, stride, groups) if small_kernel else None
        self.se = se if se is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            out = self.reparam_conv(x)
        else:
            out = self.large_conv(x)
            if self.small_conv is not None:
                out = out + self.small_conv(x)
        return self.act(self.se(out))

    def reparameterize(self) -> MergeCount:
        """Merge both branches into ``reparam_conv``; see :class:`Reparameterizable`."""
        if self.reparam_conv is not None:
            return MergeCount()
        weight, bias = self.large_conv.kernel_bias()
        merged = 1
        if self.small_conv is not None:
            small_w, small_b = self.small_conv.kernel_bias()
            weight, bias, merged = weight + pad_kernel(small_w, self.kernel_size), bias + small_b, 2
        self.reparam_conv = conv_like(self.large_conv.conv, weight, bias)
        self.large_conv = self.small_conv = None
        return MergeCount(branches=merged)
