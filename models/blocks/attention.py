"""Self-attention blocks: multi-head (token sequences and feature maps) and separable (linear) attention.

Every attention here is written out with explicit MatMuls / elementwise ops instead of the fused SDPA
kernel: Core ML converts the explicit form on every target, and the ONNX graph then shows the attention
MatMuls so MACs are counted from it (a fused kernel counts as zero in torch's flop counter).
"""

from __future__ import annotations

import torch
from torch import nn

from .algebra import bn_scale_shift


class TokenSelfAttention(nn.Module):
    """Multi-head self-attention on a token sequence ``(B, N, C)``, ``C`` split into heads of ``head_dim``.

    ``proj(softmax(q·kᵀ·s)·v)`` with ``q, k, v`` from one ``qkv`` linear layer. The largest intermediate
    is the rank-5 ``(B, N, 3, heads, head_dim)`` view (Core ML accepts tensors up to rank 5).

    Args:
        dim: channels.
        head_dim: channels per head.
        qkv_bias: whether the qkv projection has a bias.
    """

    def __init__(self, dim: int, head_dim: int = 32, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}")
        self.head_dim, self.num_heads = head_dim, dim // head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention over ``tokens`` ``(B, N, C)``; returns ``(B, N, C)``."""
        b, n, c = tokens.shape
        # q, k and v are split before the heads are formed, so no tensor exceeds rank 4: ncnn has no rank-5
        # layout, and pnnx cannot lower a (B, N, 3, heads, d) view (docs/runtimes.md)
        q, k, v = (
            part.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2) for part in self.qkv(tokens).chunk(3, -1)
        )
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attend(tokens)

    def absorb_input_norm(self, norm: nn.Module) -> bool:
        """Fold a BatchNorm applied to this block's input into ``qkv``: ``W' = W·diag(t)``, ``b' = b + W·s``.

        Args:
            norm: the BatchNorm whose output only this attention reads, or ``nn.Identity``.

        Returns:
            True if a norm was folded (the caller replaces ``norm`` with ``nn.Identity``).
        """
        affine = bn_scale_shift(norm)
        if affine is None:
            return False
        t, s = (v.detach() for v in affine)
        weight = self.qkv.weight.detach()
        bias = self.qkv.bias.detach() if self.qkv.bias is not None else torch.zeros(weight.shape[0])
        folded = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
        folded.weight = nn.Parameter(weight * t.reshape(1, -1))
        folded.bias = nn.Parameter(bias + weight @ s)
        self.qkv = folded
        return True


class MultiHeadSelfAttention(TokenSelfAttention):
    """MHSA on ``(B, C, H, W)``: tokens are the ``H·W`` positions (see :class:`TokenSelfAttention`).

    Args:
        dim: channels.
        head_dim: channels per head.
        qkv_bias: whether the qkv projection has a bias.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return self.attend(tokens).transpose(1, 2).reshape(b, c, h, w)


class SeparableSelfAttention(nn.Module):
    """Separable self-attention with linear complexity (MobileViT v2), on ``(B, C, P, N)``.

    One 1×1 conv ``qkv`` gives a 1-channel query (the latent token's score per token), keys and values.
    ``scores = softmax_N(query)``; the context vector ``c = Σ_N key·scores`` is ``(B, C, P, 1)``;
    ``out = proj(relu(value) · c)``. Only the two 1×1 convs are MACs; the rest is elementwise, so the
    attention costs O(N) instead of O(N²). Tokens of one patch position ``p`` attend to each other only.

    Args:
        dim: channels ``C``.
        bias: whether the 1×1 convs have biases.
    """

    def __init__(self, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Conv2d(dim, 1 + 2 * dim, 1, bias=bias)
        self.proj = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(x).split([1, self.dim, self.dim], dim=1)
        scores = torch.softmax(query, dim=-1)
        context = (key * scores).sum(dim=-1, keepdim=True)
        return self.proj(torch.relu(value) * context)
