"""Reparameterization algebra shared by every block: each formula exists once, here.

All functions are pure: they read weights and return new tensors, never mutating their inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights


def _batchnorm(bn: nn.Module) -> nn.modules.batchnorm._BatchNorm:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None or bn.running_mean is None:
        raise TypeError(f"expected an eval-mode BatchNorm with running statistics, got {type(bn).__name__}")
    return bn


def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return the per-channel affine ``(t, s)`` an eval-mode BatchNorm applies: ``y = t·x + s``.

    Args:
        bn: a ``nn.BatchNorm1d/2d`` with running statistics, or ``nn.Identity`` (already folded).

    Returns:
        ``(t, s)`` with ``t = γ / sqrt(σ² + ε)`` and ``s = β − t·μ``, or ``None`` for an identity.

    Raises:
        TypeError: ``bn`` is neither an identity nor a BatchNorm with running statistics.
    """
    if isinstance(bn, nn.Identity):
        return None
    bn = _batchnorm(bn)
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    t = gamma / std
    return t, beta - t * bn.running_mean


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BatchNorm that follows a conv/linear into its weight and bias.

    ``W' = t·W`` per output channel and ``b' = β + t·(b − μ)`` with ``t = γ / sqrt(σ² + ε)``, computed by
    ``torch.nn.utils.fusion`` (``fuse_linear_bn_weights`` for a 2-D weight, ``fuse_conv_bn_weights``
    otherwise). Pure: nothing is modified, and the results are new tensors detached from autograd.

    Args:
        weight: conv weight ``(out, in/groups, *k)`` or linear weight ``(out, in)``.
        bias: the producer's bias, or ``None``.
        bn: the BatchNorm reading the producer's output, or ``nn.Identity`` when already folded.

    Returns:
        The folded ``(weight, bias)``; the bias is always materialized.

    Raises:
        TypeError: ``bn`` is neither an identity nor a BatchNorm with running statistics.
    """
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    if isinstance(bn, nn.Identity):
        if bias is None:
            return weight.clone(), weight.new_zeros(weight.shape[0])
        return weight.clone(), bias.clone()
    bn = _batchnorm(bn)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_var)
    fuse = fuse_linear_bn_weights if weight.dim() == 2 else fuse_conv_bn_weights
    fused_weight, fused_bias = fuse(weight, bias, bn.running_mean, bn.running_var, bn.eps, gamma, beta)
    return fused_weight.detach(), fused_bias.detach()


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square ``k×k`` kernel to ``size×size``, keeping it centred."""
    pad = (size - kernel.shape[-1]) // 2
    if pad < 0 or (size - kernel.shape[-1]) % 2:
        raise ValueError(f"cannot centre a {kernel.shape[-1]}x{kernel.shape[-1]} kernel in {size}x{size}")
    return nn.functional.pad(kernel, [pad] * 4)


def identity_kernel(channels: int, groups: int, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Kernel of a ``size×size`` conv (``channels`` in and out, ``groups`` groups) that copies its input.

    Channel ``i`` gets a 1 at the centre of its own input channel inside its group.
    """
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, size, size, dtype=dtype)
    for i in range(channels):
        kernel[i, i % per_group, size // 2, size // 2] = 1.0
    return kernel


def conv_like(template: nn.Conv2d | None, weight: torch.Tensor, bias: torch.Tensor, **conv_args) -> nn.Conv2d:
    """Build a biased ``nn.Conv2d`` holding ``weight``/``bias``.

    Args:
        template: a conv whose geometry (stride, padding, dilation, groups) is copied, or ``None`` to
            take the geometry from ``conv_args``.
        weight: the kernel; its shape fixes channels and kernel size.
        bias: the bias.
        **conv_args: geometry overrides (``stride``, ``padding``, ``dilation``, ``groups``).
    """
    geometry = {}
    if template is not None:
        geometry = dict(
            stride=template.stride,
            padding=template.padding,
            dilation=template.dilation,
            groups=template.groups,
        )
    geometry.update(conv_args)
    groups = geometry.get("groups", 1)
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), bias=True, **geometry)
    conv.weight = nn.Parameter(weight.detach().clone())
    conv.bias = nn.Parameter(bias.detach().clone())
    return conv


def scale_output_channels(module: nn.Conv2d | nn.Linear, scale: torch.Tensor) -> None:
    """Multiply a conv/linear's output channels by ``scale`` in place (weights and bias).

    Used to fold a layer scale ``γ·f(x)`` into the last projection of ``f``.
    """
    scale = scale.detach().reshape(-1)
    shape = (-1,) + (1,) * (module.weight.dim() - 1)
    with torch.no_grad():
        module.weight.mul_(scale.reshape(shape))
        if module.bias is not None:
            module.bias.mul_(scale)
