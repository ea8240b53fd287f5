"""Pre-norm transformer layer, composed from a norm, a token mixer and an MLP."""

from __future__ import annotations

import torch
from torch import nn


class TransformerLayer(nn.Module):
    """``x = x + attn(norm1(x))``, then ``x = x + mlp(norm2(x))``.

    The layout is whatever the parts agree on: channels-last tokens ``(B, N, C)`` with LayerNorm,
    :class:`TokenSelfAttention` and a linear :class:`Mlp` (MobileViT v1), or channels-first patches
    ``(B, C, P, N)`` with GroupNorm, :class:`SeparableSelfAttention` and a 1×1-conv :class:`Mlp`
    (MobileViT v2).

    Args:
        norm1: normalization before the attention.
        attn: the token mixer.
        norm2: normalization before the MLP.
        mlp: the feed-forward network.
    """

    def __init__(self, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
