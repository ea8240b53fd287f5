"""Channel shuffle (ShuffleNet): interleave the channels of ``groups`` contiguous groups."""

from __future__ import annotations

import torch
from torch import nn


class ChannelShuffle(nn.Module):
    """Reorder channels so that channel ``j`` of group ``g`` moves to position ``j·groups + g``.

    Written with rank-4 reshapes only (``(B, g, C/g, H·W)``): Core ML and onnxruntime take it as a plain
    Reshape → Transpose → Reshape.

    Args:
        groups: number of contiguous channel groups; must divide the channel count.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h * w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
