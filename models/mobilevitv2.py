"""MobileViT v2 (Mehta & Rastegari, 2022): separable self-attention, width multiplier α, 256 px.

The network is MobileViT v1's skeleton (:class:`.mobilevit.MobileViTNet`: stem, MV2 stages, global blocks in
stages 2–4) without the final 1×1 conv, every width scaled by α; the v2 block is built on v1's block
skeleton (:class:`.mobilevit.LocalGlobalBlock`) with other norms and attention. It models locally (depthwise
3×3 conv-BN-SiLU, 1×1 conv to ``d = C/2``), unfolds into ``(B, d, P, N)``, runs GroupNorm(1) transformer
layers with separable self-attention (linear in ``N``) and a 1×1-conv MLP, folds back and projects
(1×1 conv-BN); there is no skip connection or fusion conv around it (unlike v1).

Written for the converters: timm's unfold reshapes to rank 6 (``(B, C, nh, ph, nw, pw)``), which Core ML
rejects; :func:`.blocks.unfold_patches` / :func:`.blocks.fold_patches` use reshapes and transposes of rank
≤ 5 only, and keep the batch leading so it stays dynamic under ``torch.export``. The attention is
elementwise ops and 1×1 convs (no fused kernel), and every shape except the batch is a Python int.

The seven variants differ only in α (one :class:`MobileViTV2Config` each in :data:`SPECS`). Module names
follow timm's ``mobilevitv2_*`` except the shared blocks' (:func:`key_map`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import Mlp, SeparableSelfAttention, fold_patches, make_divisible, unfold_patches
from .mobilevit import (
    CVNETS_INPUT,
    MV2_RENAMES,
    LocalGlobalBlock,
    MobileViTNet,
    patch_grid,
    rename_components,
)
from .spec import ModelSpec, ReferenceSize

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


class MobileViTV2Block(LocalGlobalBlock):
    """MobileViT v2 block: depthwise local conv, unfold, separable-attention transformer, fold, projection.

    GroupNorm(1), :class:`SeparableSelfAttention` and a 1×1-conv :class:`Mlp` on channels-first patches
    ``(B, d, P, N)``; the projection has no activation and there is no fusion with the input.

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
        super().__init__(
            chs,
            transformer_dim,
            depth,
            patch_size,
            norm_layer=lambda d: nn.GroupNorm(1, d),
            attn_layer=SeparableSelfAttention,
            mlp_layer=lambda d: Mlp(d, int(d * mlp_ratio), act_layer, channels_first=True),
            local_groups=chs,
            act_layer=act_layer,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        num_h, num_w = patch_grid(x.shape[2], p), patch_grid(x.shape[3], p)
        if (num_h * p, num_w * p) != tuple(x.shape[2:]):
            # resized up to whole patches and left at that size (as timm/cvnets do); static under export
            x = F.interpolate(x, size=(num_h * p, num_w * p), mode="bilinear", align_corners=True)
        x = self.mix(unfold_patches(self.local(x), p, p))  # (B, d, P, N)
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


SOURCE = "params and MACs measured on timm's mobilevitv2_* of the same name, reparameterized, at 256 px"
_mobilevitv2 = partial(ModelSpec, family="mobilevitv2", builder=mobilevitv2, key_map=key_map, **CVNETS_INPUT)

SPECS: tuple[ModelSpec, ...] = (
    _mobilevitv2(
        name="mobilevitv2_050",
        config=MobileViTV2Config(alpha=0.5),
        reference=ReferenceSize(params_m=1.371, gmacs=0.465, source=SOURCE),
        timm_name="mobilevitv2_050",
    ),
    _mobilevitv2(
        name="mobilevitv2_075",
        config=MobileViTV2Config(alpha=0.75),
        reference=ReferenceSize(params_m=2.866, gmacs=1.028, source=SOURCE),
        timm_name="mobilevitv2_075",
    ),
    _mobilevitv2(
        name="mobilevitv2_100",
        config=MobileViTV2Config(alpha=1.0),
        reference=ReferenceSize(params_m=4.902, gmacs=1.812, source=SOURCE),
        timm_name="mobilevitv2_100",
    ),
    _mobilevitv2(
        name="mobilevitv2_125",
        config=MobileViTV2Config(alpha=1.25),
        reference=ReferenceSize(params_m=7.478, gmacs=2.817, source=SOURCE),
        timm_name="mobilevitv2_125",
    ),
    _mobilevitv2(
        name="mobilevitv2_150",
        config=MobileViTV2Config(alpha=1.5),
        reference=ReferenceSize(params_m=10.595, gmacs=4.042, source=SOURCE),
        timm_name="mobilevitv2_150",
    ),
    _mobilevitv2(
        name="mobilevitv2_175",
        config=MobileViTV2Config(alpha=1.75),
        reference=ReferenceSize(params_m=14.252, gmacs=5.489, source=SOURCE),
        timm_name="mobilevitv2_175",
    ),
    _mobilevitv2(
        name="mobilevitv2_200",
        config=MobileViTV2Config(alpha=2.0),
        reference=ReferenceSize(params_m=18.449, gmacs=7.156, source=SOURCE),
        timm_name="mobilevitv2_200",
    ),
)
