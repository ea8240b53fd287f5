"""Mobile-Former's two-way bridge between a feature map and a few global tokens, and the Former between them.

Tokens are batch-first ``(B, T, d)``; feature maps ``(B, C, H, W)``. Heads split channels into contiguous
chunks (head ``h`` owns channels ``[h·C/n, (h+1)·C/n)``). On the feature-map side nothing is projected: the
raw map serves as keys and values (Mobile→Former) or as queries (Former→Mobile), so every projection is a
``Linear`` on the ``T`` tokens and costs ``O(T·C·d)``, while the attention matmuls cost ``O(T·C·H·W)``.

Attention is written with explicit MatMuls (see :mod:`.attention`); the scale multiplies the operand that
comes from the tokens, the smaller one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import Mlp

BRIDGE_HEADS = 2
FORMER_HEADS = 4
FORMER_MLP_RATIO = 2


class MobileToFormer(nn.Module):
    """Local → global cross-attention: the tokens read the feature map, then ``LN(tokens + proj(α·attn))``.

    Queries are ``q(tokens)`` (``d → C``); keys and values are the feature map itself, heads over channel
    chunks, softmax over the ``H·W`` positions. The result ``(B, T, C)`` is gated channel-wise per token by
    ``α = 2·hardsigmoid(alpha(tokens))`` (computed from the incoming tokens), projected back to ``d``, added to
    the tokens and normalized (post-norm).

    Args:
        channels: channels ``C`` of the feature map read.
        token_dim: token width ``d``.
        num_heads: attention heads (they split ``C``).
    """

    def __init__(self, channels: int, token_dim: int, num_heads: int = BRIDGE_HEADS) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.alpha = nn.Linear(token_dim, channels)
        self.q = nn.Linear(token_dim, channels)
        self.proj = nn.Linear(channels, token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Return the updated tokens ``(B, T, d)`` for features ``x`` ``(B, C, H, W)`` and ``tokens``."""
        b, c, h, w = x.shape
        t = tokens.shape[1]
        heads, head_chs = self.num_heads, c // self.num_heads
        q = self.q(tokens).reshape(b, t, heads, head_chs).transpose(1, 2)  # (B, n, T, C/n)
        kv = x.reshape(b, heads, head_chs, h * w)  # (B, n, C/n, HW)
        attn = torch.softmax((q * self.scale) @ kv, dim=-1)  # (B, n, T, HW)
        read = (attn @ kv.transpose(-2, -1)).transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        read = read * (2.0 * F.hardsigmoid(self.alpha(tokens)))
        return self.norm(tokens + self.proj(read))


class Former(nn.Module):
    """Token self-attention and FFN, each post-normed: ``t = LN(t + proj(attn(t)))``, ``LN(t + mlp(t))``.

    Queries are ``q(tokens)``; keys and values are the tokens themselves (no projection), softmax over the
    ``T`` tokens. The FFN is ``Linear(d → 2d) → GELU → Linear(2d → d)``.

    Args:
        token_dim: token width ``d``.
        num_heads: attention heads (they split ``d``).
        mlp_ratio: FFN expansion.
    """

    def __init__(self, token_dim: int, num_heads: int = FORMER_HEADS, mlp_ratio: int = FORMER_MLP_RATIO) -> None:
        super().__init__()
        if token_dim % num_heads:
            raise ValueError(f"token width {token_dim} does not split into {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (token_dim // num_heads) ** -0.5
        self.q = nn.Linear(token_dim, token_dim)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm1 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, token_dim * mlp_ratio, nn.GELU)
        self.norm2 = nn.LayerNorm(token_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return the updated tokens ``(B, T, d)``."""
        b, t, d = tokens.shape
        heads, head_dim = self.num_heads, d // self.num_heads
        q = self.q(tokens).reshape(b, t, heads, head_dim).transpose(1, 2)  # (B, n, T, d/n)
        kv = tokens.reshape(b, t, heads, head_dim).transpose(1, 2)  # (B, n, T, d/n)
        attn = torch.softmax((q * self.scale) @ kv.transpose(-2, -1), dim=-1)  # (B, n, T, T)
        mixed = (attn @ kv).transpose(1, 2).reshape(b, t, d)
        tokens = self.norm1(tokens + self.proj(mixed))
        return self.norm2(tokens + self.mlp(tokens))


class FormerToMobile(nn.Module):
    """Global → local cross-attention: every position reads the tokens, ``x + attn(x, k(t), v(t))``.

    Queries are the feature map itself (heads over channel chunks); keys ``k(tokens)`` and values
    ``v(tokens)`` are ``d → C`` projections; softmax over the ``T`` tokens. No norm and no output projection.

    Args:
        channels: channels ``C`` of the feature map.
        token_dim: token width ``d``.
        num_heads: attention heads (they split ``C``).
    """

    def __init__(self, channels: int, token_dim: int, num_heads: int = BRIDGE_HEADS) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.k = nn.Linear(token_dim, channels)
        self.v = nn.Linear(token_dim, channels)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Return ``x`` ``(B, C, H, W)`` plus what it reads from ``tokens`` ``(B, T, d)``."""
        b, c, h, w = x.shape
        t = tokens.shape[1]
        heads, head_chs = self.num_heads, c // self.num_heads
        q = x.reshape(b, heads, head_chs, h * w).transpose(-2, -1)  # (B, n, HW, C/n)
        k = self.k(tokens).reshape(b, t, heads, head_chs).permute(0, 2, 3, 1)  # (B, n, C/n, T)
        v = self.v(tokens).reshape(b, t, heads, head_chs).transpose(1, 2)  # (B, n, T, C/n)
        attn = torch.softmax(q @ (k * self.scale), dim=-1)  # (B, n, HW, T)
        return x + (attn @ v).transpose(-2, -1).reshape(b, c, h, w)
