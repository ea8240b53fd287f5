"""FastViT (Vasu et al., 2023): RepMixer stages, optional attention stage, MobileOne stem and head.

Module names follow timm's ``fastvit_*`` so its state dicts load strictly without a key map. The
published parameter counts are 5–10 % below what the released architecture gives; the registry gates
on the figures measured on timm's models (see "Model zoo sizes" in docs/design.md) and the README says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .blocks import (
    ConvMlp,
    LayerScale2d,
    MergeCount,
    MobileOneBlock,
    MultiHeadSelfAttention,
    Reparameterizable,
    ReparamLargeKernelConv,
    RepCPE,
    RepMixer,
    SqueezeExcite,
    fold_layer_scale,
)
from .head import ClassifierHead
from .spec import ModelSpec, ReferenceSize


@dataclass(frozen=True)
class FastViTConfig:
    """Architecture of one FastViT variant.

    Attributes:
        layers: blocks per stage.
        dims: channels per stage.
        mlp_ratio: ConvFFN expansion.
        attention_last: the last stage uses attention (with a RepCPE before it) instead of RepMixer.
        layer_scale_init: initial layer scale value.
    """

    layers: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    mlp_ratio: float
    attention_last: bool = False
    layer_scale_init: float = 1e-5


def _fold_mlp_scale(scale: nn.Module, mlp: ConvMlp) -> int:
    return int(fold_layer_scale(scale, mlp.fc2))


class RepMixerBlock(Reparameterizable):
    """MetaFormer block: RepMixer token mixer, then ``x + γ·ConvFFN(x)``."""

    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim, 3, layer_scale_init)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale = LayerScale2d(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale(self.mlp(x))

    def reparameterize(self) -> MergeCount:
        """Merge the RepMixer and fold the FFN's layer scale into ``mlp.fc2``."""
        count = self.token_mixer.reparameterize()
        folded = _fold_mlp_scale(self.layer_scale, self.mlp)
        self.layer_scale = nn.Identity()
        return count + MergeCount(layer_scales=folded)


class AttentionBlock(Reparameterizable):
    """MetaFormer block: ``x + γ₁·MHSA(BN(x))``, then ``x + γ₂·ConvFFN(x)``."""

    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.token_mixer = MultiHeadSelfAttention(dim)
        self.layer_scale_1 = LayerScale2d(dim, layer_scale_init)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.layer_scale_2 = LayerScale2d(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1(self.token_mixer(self.norm(x)))
        return x + self.layer_scale_2(self.mlp(x))

    def reparameterize(self) -> MergeCount:
        """Fold the input BN into qkv, γ₁ into the output projection and γ₂ into ``mlp.fc2``."""
        norms = int(self.token_mixer.absorb_input_norm(self.norm))
        scales = int(fold_layer_scale(self.layer_scale_1, self.token_mixer.proj))
        scales += _fold_mlp_scale(self.layer_scale_2, self.mlp)
        self.norm, self.layer_scale_1, self.layer_scale_2 = nn.Identity(), nn.Identity(), nn.Identity()
        return MergeCount(layer_scales=scales, norms=norms)


class PatchEmbed(nn.Module):
    """Downsampling: 7×7 stride-2 depthwise ReparamLargeKernelConv (3×3 branch), then a 1×1 MobileOneBlock."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(in_chs, out_chs, 7, stride=2, groups=in_chs, small_kernel=3),
            MobileOneBlock(out_chs, out_chs, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class FastViTStage(nn.Module):
    """Optional patch embedding, optional RepCPE, then ``depth`` blocks."""

    def __init__(
        self, in_chs: int, dim: int, depth: int, attention: bool, mlp_ratio: float, layer_scale_init: float
    ) -> None:
        super().__init__()
        self.downsample = PatchEmbed(in_chs, dim) if in_chs != dim else nn.Identity()
        self.pos_emb = RepCPE(dim, 7) if attention else nn.Identity()
        block = AttentionBlock if attention else RepMixerBlock
        self.blocks = nn.Sequential(*(block(dim, mlp_ratio, layer_scale_init) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pos_emb(self.downsample(x)))


class FastViT(nn.Module):
    """FastViT classifier.

    Args:
        config: the variant's architecture.
        num_classes: classifier outputs.
    """

    def __init__(self, config: FastViTConfig, num_classes: int = 1000) -> None:
        super().__init__()
        width = config.dims[0]
        self.stem = nn.Sequential(
            MobileOneBlock(3, width, 3, stride=2),
            MobileOneBlock(width, width, 3, stride=2, groups=width),
            MobileOneBlock(width, width, 1),
        )
        stages, in_chs = [], width
        for i, (depth, dim) in enumerate(zip(config.layers, config.dims, strict=True)):
            attention = config.attention_last and i == len(config.layers) - 1
            stages.append(FastViTStage(in_chs, dim, depth, attention, config.mlp_ratio, config.layer_scale_init))
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        head_chs = 2 * in_chs
        self.final_conv = MobileOneBlock(in_chs, head_chs, 3, groups=in_chs, se=SqueezeExcite(head_chs, head_chs // 16))
        self.head = ClassifierHead(head_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_conv(self.stages(self.stem(x))))


INPUT_SIZE = 256
SOURCE = (
    "params and MACs measured on timm's fastvit_* of the same name, reparameterized, at 256 px; "
    "published figures from the FastViT paper"
)
_fastvit = partial(ModelSpec, family="fastvit", builder=FastViT, input_size=INPUT_SIZE)

SPECS: tuple[ModelSpec, ...] = (
    _fastvit(
        name="fastvit_t8",
        config=FastViTConfig(layers=(2, 2, 4, 2), dims=(48, 96, 192, 384), mlp_ratio=3.0),
        reference=ReferenceSize(
            params_m=3.996, gmacs=0.685, published_params_m=3.6, published_gmacs=0.7, source=SOURCE
        ),
        timm_name="fastvit_t8",
    ),
    _fastvit(
        name="fastvit_t12",
        config=FastViTConfig(layers=(2, 2, 6, 2), dims=(64, 128, 256, 512), mlp_ratio=3.0),
        reference=ReferenceSize(
            params_m=7.509, gmacs=1.391, published_params_m=6.8, published_gmacs=1.4, source=SOURCE
        ),
        timm_name="fastvit_t12",
    ),
    _fastvit(
        name="fastvit_s12",
        config=FastViTConfig(layers=(2, 2, 6, 2), dims=(64, 128, 256, 512), mlp_ratio=4.0),
        reference=ReferenceSize(
            params_m=9.429, gmacs=1.794, published_params_m=8.8, published_gmacs=1.8, source=SOURCE
        ),
        timm_name="fastvit_s12",
    ),
    _fastvit(
        name="fastvit_sa12",
        config=FastViTConfig(layers=(2, 2, 6, 2), dims=(64, 128, 256, 512), mlp_ratio=4.0, attention_last=True),
        reference=ReferenceSize(
            params_m=11.545, gmacs=1.937, published_params_m=10.9, published_gmacs=1.9, source=SOURCE
        ),
        timm_name="fastvit_sa12",
    ),
    _fastvit(
        name="fastvit_sa24",
        config=FastViTConfig(layers=(4, 4, 12, 4), dims=(64, 128, 256, 512), mlp_ratio=4.0, attention_last=True),
        reference=ReferenceSize(
            params_m=21.501, gmacs=3.762, published_params_m=20.6, published_gmacs=3.8, source=SOURCE
        ),
        timm_name="fastvit_sa24",
    ),
    _fastvit(
        name="fastvit_sa36",
        config=FastViTConfig(
            layers=(6, 6, 18, 6), dims=(64, 128, 256, 512), mlp_ratio=4.0, attention_last=True, layer_scale_init=1e-6
        ),
        reference=ReferenceSize(
            params_m=31.457, gmacs=5.587, published_params_m=30.4, published_gmacs=5.6, source=SOURCE
        ),
        timm_name="fastvit_sa36",
    ),
    _fastvit(
        name="fastvit_ma36",
        config=FastViTConfig(
            layers=(6, 6, 18, 6), dims=(76, 152, 304, 608), mlp_ratio=4.0, attention_last=True, layer_scale_init=1e-6
        ),
        reference=ReferenceSize(
            params_m=43.985, gmacs=7.815, published_params_m=42.7, published_gmacs=7.8, source=SOURCE
        ),
        timm_name="fastvit_ma36",
    ),
)
