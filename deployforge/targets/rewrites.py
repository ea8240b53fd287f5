"""Numerically exact graph rewrites a target can apply before conversion, to keep a runtime off a slow path.

A rewrite replaces modules of the reparameterized model by modules that compute the same sums of products in
another grouping; the waterfall proves each rewritten artifact against the multi-branch original as it proves any
other. A target lists the rewrites it offers in ``Target.rewrites``; :func:`apply_rewrites` applies the ones asked
for.

``split-dw7x7``: XNNPACK's depthwise microkernels (ExecuTorch and LiteRT both run XNNPACK) take at most 25 taps, so
a 7×7 depthwise convolution (49 taps) falls to the generic IGEMM path, about 20× slower per MAC than a 3×3
(docs/runtimes.md). Split into three dilated depthwise convolutions over its columns (21, 14 and 14 taps), it takes
the fast path.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads where a model is rewritten
    import torch
    from torch import nn

SPLIT_DW7X7 = "split-dw7x7"

# A 7×7 kernel's columns (offsets -3..3 around the centre), as three centred dilated rows of taps:
# (dilation, columns). Each part is a (7, len(columns)) depthwise kernel with symmetric padding.
_DW7X7_PARTS = ((3, (0, 3, 6)), (4, (1, 5)), (2, (2, 4)))


@functools.lru_cache(maxsize=1)
def _split_module() -> type:
    """The module that replaces a 7×7 depthwise convolution (defined on first use: torch loads lazily)."""
    import torch
    from torch import nn

    class SplitDepthwise7x7(nn.Module):
        """A 7×7 depthwise convolution as the sum of three dilated depthwise convolutions over its columns.

        Taps ``{-3, 0, 3}`` (dilation 3), ``{-2, 2}`` (dilation 4) and ``{-1, 1}`` (dilation 2) along W, all
        seven rows each: the same sum of products, regrouped, for any stride.
        """

        def __init__(self, conv: nn.Conv2d) -> None:
            super().__init__()
            weight = conv.weight.detach()
            channels = conv.in_channels
            self.parts = nn.ModuleList()
            for index, (dilation, columns) in enumerate(_DW7X7_PARTS):
                width = len(columns)
                part = nn.Conv2d(
                    channels,
                    channels,
                    (7, width),
                    stride=conv.stride,
                    padding=(3, dilation * (width - 1) // 2),
                    dilation=(1, dilation),
                    groups=channels,
                    bias=index == 0 and conv.bias is not None,
                )
                with torch.no_grad():
                    part.weight.copy_(weight[:, :, :, list(columns)])
                    if part.bias is not None:
                        part.bias.copy_(conv.bias.detach())
                self.parts.append(part)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, second, third = (part(x) for part in self.parts)
            return first + second + third

    return SplitDepthwise7x7


def _is_depthwise_7x7(module: nn.Module) -> bool:
    from torch import nn

    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (7, 7)
        and module.padding == (3, 3)
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
        and module.groups == module.in_channels == module.out_channels
    )


def split_depthwise_7x7(model: nn.Module) -> tuple[nn.Module, int]:
    """The ``split-dw7x7`` rewrite: a deep copy of ``model`` with every 7×7 depthwise convolution split.

    Args:
        model: the model (not modified).

    Returns:
        The rewritten copy and the number of convolutions split.
    """
    rewritten = copy.deepcopy(model)
    split = _split_module()
    count = 0
    for parent in list(rewritten.modules()):
        for child_name, child in list(parent.named_children()):
            if _is_depthwise_7x7(child):
                setattr(parent, child_name, split(child))
                count += 1
    return rewritten, count


def apply_rewrites(model: nn.Module, rewrites: tuple[str, ...]) -> tuple[nn.Module, dict[str, str]]:
    """Apply the named rewrites to a copy of ``model`` (the target has checked it offers them).

    Args:
        model: the reparameterized model (not modified).
        rewrites: rewrite names, e.g. ``("split-dw7x7",)``; empty leaves ``model`` as it is.

    Returns:
        The model to convert and one fact per rewrite applied (what it changed), for the target's facts.
    """
    facts: dict[str, str] = {}
    if SPLIT_DW7X7 in rewrites:
        model, count = split_depthwise_7x7(model)
        facts[SPLIT_DW7X7] = f"{count} depthwise 7x7 convolutions split"
    return model, facts
