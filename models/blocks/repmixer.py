"""RepMixer token mixer and RepCPE positional encoding: skip connections folded into a depthwise conv."""

from __future__ import annotations

import torch
from torch import nn

from .algebra import conv_like, identity_kernel
from .base import MergeCount, Reparameterizable
from .layer_scale import LayerScale2d
from .mobileone import MobileOneBlock


class RepMixer(Reparameterizable):
    """``x + γ·(mixer(x) − norm(x))``, both depthwise; one depthwise conv after ``reparameterize``.

    ``norm`` is a MobileOneBlock with only its BN identity branch; ``mixer`` has a k×k conv-BN,
    a 1×1 scale branch and a BN identity.

    Args:
        dim: channels.
        kernel_size: depthwise kernel.
        layer_scale_init: initial ``γ``; ``None`` disables the layer scale (``γ = 1``).
    """

    def __init__(self, dim: int, kernel_size: int = 3, layer_scale_init: float | None = 1e-5) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.reparam_conv: nn.Conv2d | None = None
        self.norm = MobileOneBlock(
            dim, dim, kernel_size, groups=dim, num_conv_branches=0, use_scale_branch=False, act_layer=None
        )
        self.mixer = MobileOneBlock(dim, dim, kernel_size, groups=dim, act_layer=None)
        self.layer_scale = LayerScale2d(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    def reparameterize(self) -> MergeCount:
        """``W = I + γ·(W_mix − W_norm)``, ``b = γ·(b_mix − b_norm)``; see :class:`Reparameterizable`."""
        if self.reparam_conv is not None:
            return MergeCount()
        count = self.mixer.reparameterize() + self.norm.reparameterize()
        mix_w, mix_b = self.mixer.kernel_bias()
        norm_w, norm_b = self.norm.kernel_bias()
        gamma = self.layer_scale.gamma.detach().reshape(-1) if isinstance(self.layer_scale, LayerScale2d) else 1.0
        gamma_w = gamma.reshape(-1, 1, 1, 1) if isinstance(gamma, torch.Tensor) else gamma
        weight = identity_kernel(self.dim, self.dim, self.kernel_size) + gamma_w * (mix_w - norm_w)
        bias = gamma * (mix_b - norm_b)
        self.reparam_conv = conv_like(None, weight, bias, padding=self.kernel_size // 2, groups=self.dim)
        self.norm = self.mixer = None
        self.layer_scale = nn.Identity()
        # the skip connection and the two (already merged) paths collapse into one conv
        return count + MergeCount(branches=2, layer_scales=int(isinstance(gamma, torch.Tensor)))


class RepCPE(Reparameterizable):
    """Conditional positional encoding ``x + pos_enc(x)`` (depthwise); ``W = I + W_pe`` after merging.

    Args:
        dim: channels.
        kernel_size: depthwise kernel of the encoding.
    """

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.reparam_conv: nn.Conv2d | None = None
        self.pos_enc = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.pos_enc(x) + x

    def reparameterize(self) -> MergeCount:
        """Fold the skip connection into the depthwise conv; see :class:`Reparameterizable`."""
        if self.reparam_conv is not None:
            return MergeCount()
        weight = identity_kernel(self.dim, self.dim, self.kernel_size) + self.pos_enc.weight.detach()
        self.reparam_conv = conv_like(self.pos_enc, weight, self.pos_enc.bias.detach())
        self.pos_enc = None
        return MergeCount(branches=2)
