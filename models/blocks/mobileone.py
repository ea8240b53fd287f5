"""MobileOneBlock: k over-parameterized conv-BN branches + 1×1 scale branch + BN identity branch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .algebra import conv_like, fold_bn, identity_kernel, pad_kernel
from .base import MergeCount, Reparameterizable
from .conv_norm import ConvNorm


class MobileOneBlock(Reparameterizable):
    """MobileOne block (train-time multi-branch form; one k×k conv after ``reparameterize``).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel of the k×k branches.
        stride: stride of every branch.
        groups: conv groups of every branch.
        num_conv_branches: number of parallel k×k conv-BN branches (0 allowed: identity only).
        use_scale_branch: add the 1×1 conv-BN branch (only when ``kernel_size > 1``).
        se: optional squeeze-excitation module applied after the merge, before the activation.
        act_layer: activation factory, or ``None`` for no activation.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        num_conv_branches: int = 1,
        use_scale_branch: bool = True,
        se: nn.Module | None = None,
        act_layer: Callable[[], nn.Module] | None = nn.GELU,
    ) -> None:
        super().__init__()
        self.in_chs, self.out_chs = in_chs, out_chs
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.se = se if se is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self.reparam_conv: nn.Conv2d | None = None
        self.identity = nn.BatchNorm2d(in_chs) if in_chs == out_chs and stride == 1 else None
        self.conv_kxk = (
            nn.ModuleList(ConvNorm(in_chs, out_chs, kernel_size, stride, groups) for _ in range(num_conv_branches))
            if num_conv_branches > 0
            else None
        )
        self.conv_scale = ConvNorm(in_chs, out_chs, 1, stride, groups) if kernel_size > 1 and use_scale_branch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        branches = [branch(x) for branch in self.conv_kxk or ()]
        if self.conv_scale is not None:
            branches.append(self.conv_scale(x))
        if self.identity is not None:
            branches.append(self.identity(x))
        out = branches[0]
        for branch_out in branches[1:]:
            out = out + branch_out
        return self.act(self.se(out))

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the single k×k conv ``(weight, bias)`` equivalent to the sum of all branches."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight.detach(), self.reparam_conv.bias.detach()
        k = self.kernel_size
        weight = torch.zeros(self.out_chs, self.in_chs // self.groups, k, k)
        bias = torch.zeros(self.out_chs)
        for branch in self.conv_kxk or ():
            w, b = branch.kernel_bias()
            weight, bias = weight + w, bias + b
        if self.conv_scale is not None:
            w, b = self.conv_scale.kernel_bias()
            weight, bias = weight + pad_kernel(w, k), bias + b
        if self.identity is not None:
            w, b = fold_bn(identity_kernel(self.in_chs, self.groups, k), None, self.identity)
            weight, bias = weight + w, bias + b
        return weight, bias

    def reparameterize(self) -> MergeCount:
        """Merge every branch into ``reparam_conv``; see :class:`Reparameterizable`."""
        if self.reparam_conv is not None:
            return MergeCount()
        merged = len(self.conv_kxk or ()) + (self.conv_scale is not None) + (self.identity is not None)
        weight, bias = self.kernel_bias()
        self.reparam_conv = conv_like(
            None, weight, bias, stride=self.stride, padding=self.kernel_size // 2, groups=self.groups
        )
        self.conv_kxk = self.conv_scale = self.identity = None
        return MergeCount(branches=merged)
