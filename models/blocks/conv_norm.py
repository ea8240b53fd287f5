"""ConvNorm: a conv followed by BatchNorm (and an optional activation), kept as children so weights map 1:1."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .algebra import fold_bn


class ConvNorm(nn.Module):
    """``act(bn(conv(x)))``; after the fuse stage ``bn`` is ``nn.Identity`` and ``conv`` carries the bias.

    The children are ``conv``, ``bn`` and ``act`` (the activation has no weights, so the state-dict keys
    are those of a plain conv-BN pair whether or not an activation is set).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel size; padding keeps the spatial size (``k // 2``).
        stride: conv stride.
        groups: conv groups.
        act_layer: activation factory, or ``None`` for none (``act`` is then ``nn.Identity``).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act_layer: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the equivalent single conv's ``(weight, bias)`` of ``bn(conv(x))``, BatchNorm folded in.

        Raises:
            ValueError: the ConvNorm has an activation, so no single conv is equivalent to it.
        """
        if not isinstance(self.act, nn.Identity):
            raise ValueError(f"a ConvNorm with {type(self.act).__name__} is not a linear branch; cannot merge it")
        return fold_bn(self.conv.weight, self.conv.bias, self.bn)
