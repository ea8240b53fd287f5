"""MobileViT v2 (Mehta & Rastegari, 2022): separable self-attention, width multiplier α, 256 px.

The network is MobileViT v1's skeleton (:class:`.mobilevit.MobileViTNet`: stem, MV2 stages, global blocks in
stages 2–4) without the final 1×1 conv, every width scaled by α. The v2 block models locally (depthwise
3×3 conv-BN-SiLU, 1×1 conv to ``d = C/2``), unfolds into ``(B, d, P, N)``, runs GroupNorm(1) transformer
layers with separable self-attention (linear in ``N``) and a 1×1-conv MLP, folds back and projects
(1×1 conv-BN); there is no skip connection or fusion conv around it (unlike v1).

Written for the converters: timm's unfold reshapes to rank 6 (``(B, C, nh, ph, nw, pw)``), which Core ML
rejects; :func:`.blocks.unfold_patches` / :func:`.blocks.fold_patches` use reshapes and transposes of rank
≤ 5 only, and keep the batch leading so it stays dynamic under ``torch.export``. The attention is
elementwise ops and 1×1 convs (no fused kernel), and every shape except the batch is a Python int.

The seven variants differ only in α (:data:`ALPHAS`, data, not seven copies). Module names follow timm's
``mobilevitv2_*`` except the shared blocks' (:func:`key_map`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import (
    ConvNorm,
    Mlp,
    SeparableSelfAttention,
    TransformerLayer,
    fold_patches,
    make_divisible,
    unfold_patches,
)
from .mobilevit import INPUT_MEAN, INPUT_SIZE, INPUT_STD, MV2_RENAMES, MobileViTNet, patch_grid, rename_components

if TYPE_CHECKING:
    from deployforge.registry import ModelSpec

BASE_WIDTHS = (64, 128, 256, 384, 512)  # α = 1 stage widths
BASE_STEM = 32
TRANSFORMER_DEPTHS = (2, 4, 3)
EXPANSION = 2.0  # MV2 expansion
TRANSFORMER_RATIO = 0.5  # token width d = make_divisible(0.5 · C)

# timm name → ours per dotted component: the MV2 block's convs and the separable attention's projections.
V2_RENAMES: dict[str, str] = {**MV2_RENAMES, "qkv_proj": "qkv", "out_proj": "proj"}


def key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a timm ``mobilevitv2_*`` state dict onto ours (:data:`V2_RENAMES`); keys only.

    Every other key (and a state dict already in our naming) passes through unchanged.

    Args:
        state: timm's state dict.

    Returns:
        A new dict with the same tensors under our module names.
    """
    return rename_components(state, V2_RENAMES)


class MobileViTV2Block(nn.Module):
    """MobileViT v2 block: depthwise local conv, unfold, separable-attention transformer, fold, projection.

    Args:
        chs: input and output channels.
        transformer_dim: token width ``d``.
        depth: transformer layers.
        patch_size: square patch side.
        mlp_ratio: MLP expansion.
        act_layer: activation of the local conv and the MLP.
    """

    def __init__(
        self,
        chs: int,
        transformer_dim: int,
        depth: int,
        patch_size: int = 2,
        mlp_ratio: float = 2.0,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        d = transformer_dim
        self.patch_size = patch_size
        self.conv_kxk = ConvNorm(chs, chs, 3, groups=chs, act_layer=act_layer)
        self.conv_1x1 = nn.Conv2d(chs, d, 1, bias=False)
        self.transformer = nn.Sequential(
            *(
                TransformerLayer(
                    nn.GroupNorm(1, d),
                    SeparableSelfAttention(d),
                    nn.GroupNorm(1, d),
                    Mlp(d, int(d * mlp_ratio), act_layer, channels_first=True),
                )
                for _ in range(depth)
            )
        )
        self.norm = nn.GroupNorm(1, d)
        self.conv_proj = ConvNorm(d, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        num_h, num_w = patch_grid(x.shape[2], p), patch_grid(x.shape[3], p)
        if (num_h * p, num_w * p) != tuple(x.shape[2:]):
            # resized up to whole patches and left at that size (as timm/cvnets do); static under export
            x = F.interpolate(x, size=(num_h * p, num_w * p), mode="bilinear", align_corners=True)
        x = self.conv_1x1(self.conv_kxk(x))
        x = self.norm(self.transformer(unfold_patches(x, p, p)))  # (B, d, P, N)
        return self.conv_proj(fold_patches(x, p, p, num_h, num_w))


@dataclass(frozen=True)
class MobileViTV2Config:
    """Architecture of one MobileViT v2 variant: everything follows from the width multiplier.

    Attributes:
        alpha: width multiplier α.
    """

    alpha: float

    @property
    def widths(self) -> tuple[int, ...]:
        """Output channels of the five stages, ``int(base · α)``."""
        return tuple(int(c * self.alpha) for c in BASE_WIDTHS)

    @property
    def stem_chs(self) -> int:
        """Stem output channels, ``int(32 · α)``."""
        return int(BASE_STEM * self.alpha)

    @property
    def transformer_dims(self) -> tuple[int, ...]:
        """Token width of the v2 blocks of stages 2–4."""
        return tuple(make_divisible(TRANSFORMER_RATIO * c) for c in self.widths[2:])


def mobilevitv2(config: MobileViTV2Config, num_classes: int = 1000) -> MobileViTNet:
    """Build a MobileViT v2 network from its configuration.

    Args:
        config: the variant's width multiplier.
        num_classes: classifier outputs.
    """
    dims = config.transformer_dims

    def vit_block(stage: int, chs: int) -> MobileViTV2Block:
        return MobileViTV2Block(chs, dims[stage], TRANSFORMER_DEPTHS[stage])

    return MobileViTNet(config.stem_chs, config.widths, 2, EXPANSION, vit_block, None, num_classes)


ALPHAS: dict[str, float] = {
    "mobilevitv2_050": 0.5,
    "mobilevitv2_075": 0.75,
    "mobilevitv2_100": 1.0,
    "mobilevitv2_125": 1.25,
    "mobilevitv2_150": 1.5,
    "mobilevitv2_175": 1.75,
    "mobilevitv2_200": 2.0,
}

# (params M, GMACs) of the reparameterized model at 256 px, measured on timm's implementation — DESIGN section 3
SIZES: dict[str, tuple[float, float]] = {
    "mobilevitv2_050": (1.371, 0.465),
    "mobilevitv2_075": (2.866, 1.028),
    "mobilevitv2_100": (4.902, 1.812),
    "mobilevitv2_125": (7.478, 2.817),
    "mobilevitv2_150": (10.595, 4.042),
    "mobilevitv2_175": (14.252, 5.489),
    "mobilevitv2_200": (18.449, 7.156),
}


def build(name: str) -> MobileViTNet:
    """Build the MobileViT v2 variant ``name`` with random weights."""
    return mobilevitv2(MobileViTV2Config(ALPHAS[name]))


def specs() -> list[ModelSpec]:
    """Registry entries for every mobilevitv2 variant."""
    from deployforge.registry import variant_specs

    return variant_specs("mobilevitv2", build, SIZES, INPUT_SIZE, key_map=key_map, mean=INPUT_MEAN, std=INPUT_STD)
