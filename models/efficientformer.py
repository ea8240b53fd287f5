"""EfficientFormer (Li et al., 2022): conv stem, pooling meta-blocks on maps, attention meta-blocks on tokens.

The network is "dimension-consistent": a 4D partition of meta-blocks on ``(B, C, H, W)`` maps (token mixer
``pool(x) − x``, a 1×1-conv MLP with BatchNorms, layer scales) runs through all four stages, and the end of
the last stage flattens the map into tokens ``(B, N, C)`` for a 3D partition of transformer meta-blocks
(LayerNorm, attention with a learned relative-position bias, linear MLP, layer scales). The classifier has
two heads, the class head and the distillation head; at inference their logits are averaged.

Module names follow timm's ``efficientformer_*`` (the weights' reference). timm stores the 4D blocks' layer
scales as ``(C,)`` and the shared :class:`LayerScale2d` as ``(C, 1, 1)``; :func:`key_map` reshapes them.

The attention bias is learned per position of a 7×7 token grid, so the model takes 224 px inputs only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .blocks import LayerScale2d, MergeCount, Mlp, Reparameterizable, fold_layer_scale
from .blocks.learned_bias_attention import LearnedBiasAttention
from .blocks.token_layer_scale import TokenLayerScale, fold_token_layer_scale
from .spec import ModelSpec, ReferenceSize

INPUT_SIZE = 224
STRIDE = 32  # stem /4, then three stride-2 downsamples
POOL_SIZE = 3


@dataclass(frozen=True)
class EfficientFormerConfig:
    """Architecture of one EfficientFormer variant.

    Attributes:
        depths: meta-blocks per stage (4D and 3D together).
        widths: channels per stage.
        num_vit: how many of the last stage's final blocks are attention (3D) meta-blocks.
        mlp_ratio: MLP expansion in both kinds of meta-block.
        layer_scale_init: initial layer scale value.
    """

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    num_vit: int
    mlp_ratio: float = 4.0
    layer_scale_init: float = 1e-5

    def __post_init__(self) -> None:
        if not 1 <= self.num_vit <= self.depths[-1]:
            raise ValueError(f"num_vit must be between 1 and the last stage's depth {self.depths[-1]}")


def input_size_error(size: tuple[int, int] | int) -> ValueError:
    """The one-line error for an input of a size other than the one the bias table was learned for."""
    got = f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"
    grid = INPUT_SIZE // STRIDE
    return ValueError(
        f"EfficientFormer takes {INPUT_SIZE}x{INPUT_SIZE} px inputs only (its attention bias is learned for a "
        f"{grid}x{grid} token grid); got {got}"
    )


def _conv_bn(in_chs: int, out_chs: int, suffix: str = "") -> OrderedDict[str, nn.Module]:
    """A biased 3×3 stride-2 conv and its BatchNorm, named ``conv{suffix}`` / ``norm{suffix}`` as in timm."""
    return OrderedDict(
        [(f"conv{suffix}", nn.Conv2d(in_chs, out_chs, 3, 2, 1)), (f"norm{suffix}", nn.BatchNorm2d(out_chs))]
    )


def stem(in_chs: int, out_chs: int) -> nn.Sequential:
    """Two 3×3 stride-2 conv-BN-ReLU layers (``out_chs // 2``, then ``out_chs`` channels)."""
    layers = _conv_bn(in_chs, out_chs // 2, "1")
    layers["act1"] = nn.ReLU()
    layers.update(_conv_bn(out_chs // 2, out_chs, "2"))
    layers["act2"] = nn.ReLU()
    return nn.Sequential(layers)


class PoolMixer(nn.Module):
    """PoolFormer's token mixer ``pool(x) − x``: 3×3 average over the neighbours inside the map."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(POOL_SIZE, stride=1, padding=POOL_SIZE // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class NormedConvMlp(Mlp):
    """The channels-first :class:`Mlp` with a BatchNorm after each 1×1 conv: ``bn₂(fc2(act(bn₁(fc1(x)))))``.

    Args:
        dim: input and output channels.
        hidden: channels after the expansion.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(dim, hidden, nn.GELU, channels_first=True)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))

    def absorb_output_scale(self, scale: nn.Module) -> bool:
        """Fold a layer scale applied to this MLP's output into its last affine step.

        If ``norm2`` is still a BatchNorm (the fuse stage has not run), ``γ·bn(y)`` is a BatchNorm with affine
        ``γ·w, γ·b`` (its statistics unchanged), so the scale goes there and the fuse stage later folds the
        whole into ``fc2``; otherwise ``fc2`` carries the folded BatchNorm and the scale goes into ``fc2``.

        Args:
            scale: a :class:`LayerScale2d`, or ``nn.Identity`` if already folded.

        Returns:
            True if a scale was folded (the caller replaces ``scale`` with ``nn.Identity``).
        """
        if not isinstance(scale, LayerScale2d):
            return False
        if not isinstance(self.norm2, nn.BatchNorm2d):
            return fold_layer_scale(scale, self.fc2)
        gamma = scale.gamma.detach().reshape(-1)
        with torch.no_grad():
            self.norm2.weight.mul_(gamma)
            self.norm2.bias.mul_(gamma)
        return True


class PoolMetaBlock(Reparameterizable):
    """4D meta-block: ``x + γ₁·(pool(x) − x)``, then ``x + γ₂·mlp(x)``.

    γ₂ folds into the MLP's last affine step. γ₁ stays: the pooling mixer has no weights to carry it, and
    writing ``(1 − γ₁)·x + γ₁·pool(x)`` instead would cost the same three elementwise ops.
    """

    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float) -> None:
        super().__init__()
        self.token_mixer = PoolMixer()
        self.ls1 = LayerScale2d(dim, layer_scale_init)
        self.mlp = NormedConvMlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale2d(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.token_mixer(x))
        return x + self.ls2(self.mlp(x))

    def reparameterize(self) -> MergeCount:
        """Fold γ₂ into the MLP (its ``norm2`` BatchNorm, or ``fc2`` once that BatchNorm is folded)."""
        folded = int(self.mlp.absorb_output_scale(self.ls2))
        self.ls2 = nn.Identity()
        return MergeCount(layer_scales=folded)


class AttentionMetaBlock(Reparameterizable):
    """3D meta-block: ``x + γ₁·attn(LN(x))``, then ``x + γ₂·mlp(LN(x))``, on tokens ``(B, N, C)``.

    At inference γ₁ folds into the attention's output projection and γ₂ into the MLP's ``fc2``, and the bias
    table is gathered once (:class:`LearnedBiasAttention`).
    """

    def __init__(self, dim: int, mlp_ratio: float, layer_scale_init: float, resolution: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = LearnedBiasAttention(dim, resolution=resolution)
        self.ls1 = TokenLayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = TokenLayerScale(dim, layer_scale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.token_mixer(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def reparameterize(self) -> MergeCount:
        """Gather the attention bias, fold γ₁ into ``token_mixer.proj`` and γ₂ into ``mlp.fc2``."""
        count = self.token_mixer.reparameterize()
        folded = int(fold_token_layer_scale(self.ls1, self.token_mixer.proj))
        folded += int(fold_token_layer_scale(self.ls2, self.mlp.fc2))
        self.ls1, self.ls2 = nn.Identity(), nn.Identity()
        return count + MergeCount(layer_scales=folded)


class Flat(nn.Module):
    """``(B, C, H, W)`` map to ``(B, H·W, C)`` tokens, row-major."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class EfficientFormerStage(nn.Module):
    """Optional conv-BN downsampling, then ``depth`` meta-blocks, the last ``num_vit`` on tokens after a Flat.

    The Flat occupies an index of ``blocks`` (as in timm), so the block indices after it match timm's keys.
    """

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        num_vit: int,
        downsample: bool,
        config: EfficientFormerConfig,
        resolution: int,
    ) -> None:
        super().__init__()
        self.downsample = nn.Sequential(_conv_bn(in_chs, dim)) if downsample else nn.Identity()
        blocks: list[nn.Module] = []
        first_vit = depth - num_vit
        for i in range(depth):
            if i < first_vit:
                blocks.append(PoolMetaBlock(dim, config.mlp_ratio, config.layer_scale_init))
                continue
            if i == first_vit:
                blocks.append(Flat())
            blocks.append(AttentionMetaBlock(dim, config.mlp_ratio, config.layer_scale_init, resolution))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class EfficientFormer(nn.Module):
    """EfficientFormer classifier.

    Args:
        config: the variant's architecture.
        num_classes: classifier outputs.
        input_size: input side; only :data:`INPUT_SIZE` is accepted (the bias table fixes the token grid).

    Raises:
        ValueError: ``input_size`` is not :data:`INPUT_SIZE` (here, or for an input at ``forward``).
    """

    def __init__(self, config: EfficientFormerConfig, num_classes: int = 1000, input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        if input_size != INPUT_SIZE:
            raise input_size_error(input_size)
        widths = config.widths
        self.stem = stem(3, widths[0])
        stages, in_chs = [], widths[0]
        for i, (depth, dim) in enumerate(zip(config.depths, widths, strict=True)):
            num_vit = config.num_vit if i == len(widths) - 1 else 0
            stages.append(
                EfficientFormerStage(
                    in_chs, dim, depth, num_vit, downsample=i > 0, config=config, resolution=INPUT_SIZE // STRIDE
                )
            )
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(in_chs)
        self.head = nn.Linear(in_chs, num_classes)
        self.head_dist = nn.Linear(in_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise input_size_error(tuple(x.shape[-2:]))
        tokens = self.norm(self.stages(self.stem(x)))
        pooled = tokens.mean(1)
        # the distillation head is trained against a teacher; at inference both heads' logits are averaged
        return (self.head(pooled) + self.head_dist(pooled)) / 2


def key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a timm ``efficientformer_*`` state dict onto ours: the 4D blocks' ``(C,)`` layer scales become ``(C, 1, 1)``.

    A 4D block is one without an attention (``token_mixer.qkv``); the 3D blocks' ``(C,)`` scales stay as they are.
    Mapping our own state dict again changes nothing.
    """
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-1] == "gamma" and len(parts) > 1 and parts[-2] in ("ls1", "ls2"):
            attention = ".".join([*parts[:-2], "token_mixer", "qkv", "weight"])
            if attention not in state:
                value = value.reshape(-1, 1, 1)
        mapped[key] = value
    return mapped


SOURCE = (
    "params and MACs measured on timm's efficientformer_* of the same name (both classifier heads, which the "
    "model averages), at 224 px; published figures from the EfficientFormer paper (Table 1)"
)
_efficientformer = partial(
    ModelSpec,
    family="efficientformer",
    builder=EfficientFormer,
    input_size=INPUT_SIZE,
    key_map=key_map,
    fixed_input_size=True,
)

SPECS: tuple[ModelSpec, ...] = (
    _efficientformer(
        name="efficientformer_l1",
        config=EfficientFormerConfig(depths=(3, 2, 6, 4), widths=(48, 96, 224, 448), num_vit=1),
        reference=ReferenceSize(
            params_m=12.290, gmacs=1.291, published_params_m=12.3, published_gmacs=1.3, source=SOURCE
        ),
        timm_name="efficientformer_l1",
    ),
    _efficientformer(
        name="efficientformer_l3",
        config=EfficientFormerConfig(depths=(4, 4, 12, 6), widths=(64, 128, 320, 512), num_vit=4),
        reference=ReferenceSize(
            params_m=31.406, gmacs=3.907, published_params_m=31.3, published_gmacs=3.9, source=SOURCE
        ),
        timm_name="efficientformer_l3",
    ),
    _efficientformer(
        name="efficientformer_l7",
        config=EfficientFormerConfig(depths=(6, 6, 18, 8), widths=(96, 192, 384, 768), num_vit=8),
        reference=ReferenceSize(
            params_m=82.229, gmacs=10.119, published_params_m=82.1, published_gmacs=10.2, source=SOURCE
        ),
        timm_name="efficientformer_l7",
    ),
)
