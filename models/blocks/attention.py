"""Multi-head self-attention over the spatial positions of a feature map."""

from __future__ import annotations

import torch
from torch import nn

from .algebra import bn_scale_shift


class MultiHeadSelfAttention(nn.Module):
    """MHSA on ``(B, C, H, W)``: tokens are the ``H·W`` positions, ``C`` split into heads of ``head_dim``.

    Attention is written out (``softmax(q·kᵀ·s)·v``) instead of calling the fused SDPA kernel: Core ML
    converts the explicit form on every target, and the ONNX graph then shows the attention MatMuls
    so MACs are counted from it (a fused kernel counts as zero in torch's flop counter).

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)

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
