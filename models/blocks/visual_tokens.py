"""Visual-transformer blocks (Wu et al., "Visual Transformers", 2020): tokenizers, token attention, projector.

A tokenizer pools a feature map ``(B, C, H, W)`` into ``L`` visual tokens ``(B, L, C_T)`` through ``L``
spatial attention maps (a softmax over the ``H·W`` pixels); the tokens are mixed by a transformer layer whose
attention is :class:`TokenAttention`; the projector adds what the tokens hold back onto the feature map (each
pixel attends over the ``L`` tokens). Tokens are channels-last ``(B, L, C)``, as for
:class:`~.attention.TokenSelfAttention`, so the shared :class:`~.transformer.TransformerLayer` and
:class:`~.mlp.Mlp` compose with them.

Every attention is written out with explicit MatMuls (see :mod:`.attention`), and no convolution or linear
layer here has a bias (the equations have none).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

POSITION_GRID = 14  # attention maps are resized to this grid before the position encoder downsamples them


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, heads, C / heads, H·W)``."""
    return x.reshape(x.shape[0], heads, x.shape[1] // heads, -1)


class TokenPositionEncoder(nn.Module):
    """Position of each token, read from its attention maps: ``P = downsample(A)ᵀ·W_A→P``.

    Each token's maps (one per head) are resized to ``grid × grid`` (a no-op at the published input size,
    where the map already is 14×14; at other sizes it keeps the encoder's weights valid, so the input size
    is not fixed), downsampled by one stride-2 3×3 conv to one ``(grid / 2)²`` map, flattened and projected.

    Args:
        heads: attention maps per token (input channels of the downsampling conv).
        grid: side the maps are resized to.
    """

    def __init__(self, heads: int, grid: int = POSITION_GRID) -> None:
        super().__init__()
        self.grid = grid
        self.downsample = nn.Conv2d(heads, 1, 3, stride=2, padding=1, bias=False)
        self.dim = ((grid + 1) // 2) ** 2
        self.proj = nn.Linear(self.dim, self.dim, bias=False)

    def forward(self, coef: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Encode ``coef`` ``(B, heads, L, H·W)`` of a ``size = (H, W)`` map; returns ``(B, L, dim)``."""
        tokens = coef.shape[2]
        maps = coef.transpose(1, 2).reshape(-1, coef.shape[1], *size)  # (B·L, heads, H, W)
        if tuple(size) != (self.grid, self.grid):
            maps = F.interpolate(maps, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return self.proj(self.downsample(maps).reshape(-1, tokens, self.dim))


class _Tokenizer(nn.Module):
    """What both tokenizers share: the grouped value conv, the pooling, the position encoding, the output linear.

    Args:
        in_chs: feature-map channels ``C``.
        token_chs: token channels ``C_T``.
        heads: attention heads (the value channels are split among them).
        groups: groups of the pixel-wise 1×1 value conv.
        position: concatenate the position encoding before the output linear.
    """

    def __init__(self, in_chs: int, token_chs: int, heads: int, groups: int, position: bool) -> None:
        super().__init__()
        if in_chs % heads or in_chs % groups:
            raise ValueError(f"{in_chs} channels do not split into {heads} heads and {groups} groups")
        self.heads = heads
        self.value = nn.Conv2d(in_chs, in_chs, 1, groups=groups, bias=False)
        self.position = TokenPositionEncoder(heads) if position else None
        extra = self.position.dim if self.position is not None else 0
        self.proj = nn.Linear(in_chs + extra, token_chs, bias=False)

    def pool(self, coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Tokens from the attention maps ``coef`` ``(B, heads, L, H·W)`` over ``x`` ``(B, C, H, W)``."""
        value = _heads(self.value(x), self.heads).transpose(-1, -2)  # (B, heads, H·W, C / heads)
        pooled = (coef @ value).transpose(1, 2).flatten(2)  # (B, L, C)
        if self.position is not None:
            pooled = torch.cat((pooled, self.position(coef, tuple(x.shape[-2:]))), dim=-1)
        return self.proj(pooled)


class FilterTokenizer(_Tokenizer):
    """First tokenizer: ``A = softmax_HW(X·W_A / √C)``, ``T = Aᵀ·V(X)``: ``L`` learned spatial filters.

    Args:
        in_chs: feature-map channels ``C``.
        tokens: number of tokens ``L``.
        token_chs: token channels ``C_T``.
        groups: groups of the value conv.
        position: add the position encoding.
    """

    def __init__(self, in_chs: int, tokens: int, token_chs: int, groups: int = 16, position: bool = True) -> None:
        super().__init__(in_chs, token_chs, heads=1, groups=groups, position=position)
        self.coef = nn.Conv2d(in_chs, tokens, 1, bias=False)
        self.scale = in_chs**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` → tokens ``(B, L, C_T)``."""
        logits = self.coef(x).flatten(2).unsqueeze(1) * self.scale  # (B, 1, L, H·W)
        return self.pool(torch.softmax(logits, dim=-1), x)


class RecurrentTokenizer(_Tokenizer):
    """Later tokenizers: the previous tokens choose the filters, ``W_R = T_in·W_T→R``, ``A = softmax_HW(K(X)·W_Rᵀ)``.

    Multi-head: each head's map weighs that head's share of the value channels. Every token is re-extracted.

    Args:
        in_chs: feature-map channels ``C``.
        token_chs: channels ``C_T`` of the input and output tokens.
        heads: attention heads.
        groups: groups of the key and value convs.
        position: add the position encoding.
    """

    def __init__(self, in_chs: int, token_chs: int, heads: int = 16, groups: int = 16, position: bool = True) -> None:
        super().__init__(in_chs, token_chs, heads=heads, groups=groups, position=position)
        self.query = nn.Linear(token_chs, in_chs, bias=False)  # W_T→R
        self.key = nn.Conv2d(in_chs, in_chs, 1, groups=groups, bias=False)
        self.scale = (in_chs // heads) ** -0.5

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` and the previous ``tokens`` ``(B, L, C_T)`` → new tokens ``(B, L, C_T)``."""
        query = self.query(tokens)
        query = query.reshape(query.shape[0], query.shape[1], self.heads, -1).transpose(1, 2)  # (B, h, L, d)
        logits = (query * self.scale) @ _heads(self.key(x), self.heads)  # (B, h, L, H·W)
        return self.pool(torch.softmax(logits, dim=-1), x)


class TokenAttention(nn.Module):
    """Self-attention among tokens ``(B, L, C)`` with grouped projections and no output projection.

    ``softmax_L((T·W_q)(T·W_k)ᵀ / √d)·(T·W_v)``: queries and keys have ``C / 2`` channels, values ``C``; the
    three projections are grouped 1×1 convs over the token axis. The residual is the caller's
    (:class:`~.transformer.TransformerLayer`).

    Args:
        dim: token channels.
        heads: attention heads.
        groups: groups of the query, key and value projections.
    """

    def __init__(self, dim: int, heads: int = 16, groups: int = 8) -> None:
        super().__init__()
        if dim % (2 * heads) or dim % (2 * groups):
            raise ValueError(f"dim {dim} does not split into {heads} heads and {groups} groups of half width")
        self.heads = heads
        self.scale = (dim // 2 // heads) ** -0.5
        self.query = nn.Conv1d(dim, dim // 2, 1, groups=groups, bias=False)
        self.key = nn.Conv1d(dim, dim // 2, 1, groups=groups, bias=False)
        self.value = nn.Conv1d(dim, dim, 1, groups=groups, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        channels_first = tokens.transpose(1, 2)  # (B, C, L)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], self.heads, -1, x.shape[-1])  # (B, h, d, L)

        query = heads(self.query(channels_first)).transpose(-1, -2)
        attn = torch.softmax((query * self.scale) @ heads(self.key(channels_first)), dim=-1)  # (B, h, L, L)
        out = attn @ heads(self.value(channels_first)).transpose(-1, -2)  # (B, h, L, d_v)
        return out.transpose(1, 2).flatten(2)


class TokenProjector(nn.Module):
    """Projects tokens back onto the map: ``X_out = X_in + softmax_L((X_in·W_Q)(T·W_K)ᵀ)·(T·W_V)``.

    Each pixel attends over the ``L`` tokens (multi-head, scaled by ``1/√d``). When the output has more
    channels than the input, the residual goes through a 1×1 lateral conv and the value projection writes the
    output width, while queries and keys keep the input width.

    Args:
        in_chs: input map channels.
        out_chs: output map channels.
        token_chs: token channels ``C_T``.
        heads: attention heads.
        groups: groups of the pixel-wise query conv.
    """

    def __init__(self, in_chs: int, out_chs: int, token_chs: int, heads: int = 16, groups: int = 16) -> None:
        super().__init__()
        if in_chs % heads or out_chs % heads or in_chs % groups:
            raise ValueError(f"{in_chs}→{out_chs} channels do not split into {heads} heads and {groups} groups")
        self.heads = heads
        self.scale = (in_chs // heads) ** -0.5
        self.query = nn.Conv2d(in_chs, in_chs, 1, groups=groups, bias=False)
        self.key = nn.Linear(token_chs, in_chs, bias=False)
        self.value = nn.Linear(token_chs, out_chs, bias=False)
        self.lateral = nn.Conv2d(in_chs, out_chs, 1, bias=False) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, H, W)``, ``tokens`` ``(B, L, C_T)`` → ``(B, C_out, H, W)``."""
        b, _, h, w = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)  # (B, heads, L, d)

        query = _heads(self.query(x), self.heads).transpose(-1, -2)  # (B, heads, H·W, d)
        attn = torch.softmax((query * self.scale) @ heads(self.key(tokens)).transpose(-1, -2), dim=-1)
        out = (attn @ heads(self.value(tokens))).transpose(-1, -2)  # (B, heads, d_out, H·W)
        return self.lateral(x) + out.reshape(b, -1, h, w)
