"""FastViT (Vasu et al., 2023): RepMixer stages, optional attention stage, MobileOne stem and head.

Module names follow timm's ``fastvit_*`` so its state dicts load strictly without a key map. The
published parameter counts are 5–10 % below what the released architecture gives; the registry gates
on the measured column (see DESIGN section 3) and the README says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from deployforge.registry import ModelSpec


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


VARIANTS: dict[str, FastViTConfig] = {
    "fastvit_t8": FastViTConfig((2, 2, 4, 2), (48, 96, 192, 384), 3),
    "fastvit_t12": FastViTConfig((2, 2, 6, 2), (64, 128, 256, 512), 3),
    "fastvit_s12": FastViTConfig((2, 2, 6, 2), (64, 128, 256, 512), 4),
    "fastvit_sa12": FastViTConfig((2, 2, 6, 2), (64, 128, 256, 512), 4, attention_last=True),
    "fastvit_sa24": FastViTConfig((4, 4, 12, 4), (64, 128, 256, 512), 4, attention_last=True),
    "fastvit_sa36": FastViTConfig((6, 6, 18, 6), (64, 128, 256, 512), 4, attention_last=True, layer_scale_init=1e-6),
    "fastvit_ma36": FastViTConfig((6, 6, 18, 6), (76, 152, 304, 608), 4, attention_last=True, layer_scale_init=1e-6),
}

# (measured params M, measured GMACs, published params M, published GMACs) at 256 px — DESIGN section 3
SIZES: dict[str, tuple[float, float, float, float]] = {
    "fastvit_t8": (3.996, 0.685, 3.6, 0.7),
    "fastvit_t12": (7.509, 1.391, 6.8, 1.4),
    "fastvit_s12": (9.429, 1.794, 8.8, 1.8),
    "fastvit_sa12": (11.545, 1.937, 10.9, 1.9),
    "fastvit_sa24": (21.501, 3.762, 20.6, 3.8),
    "fastvit_sa36": (31.457, 5.587, 30.4, 5.6),
    "fastvit_ma36": (43.985, 7.815, 42.7, 7.8),
}


def build(name: str) -> FastViT:
    """Build the train-time FastViT variant ``name`` with random weights."""
    return FastViT(VARIANTS[name])


def specs() -> list[ModelSpec]:
    """Registry entries for every fastvit variant."""
    from deployforge.registry import variant_specs

    return variant_specs("fastvit", build, SIZES, 256)
