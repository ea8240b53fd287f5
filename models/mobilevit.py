"""MobileViT v1 (Mehta & Rastegari, 2022): MV2 inverted residuals and MobileViT blocks, 256 px.

A MobileViT block models locally (3×3 conv-BN-SiLU, 1×1 conv to the transformer width), unfolds the map
into ``P = 2×2`` patch positions × ``N`` patches, runs a LayerNorm transformer over the ``N`` tokens of each
position, folds back, projects (1×1 conv-BN-SiLU) and fuses with its input (3×3 conv-BN-SiLU on the
concatenation). The network skeleton here (stem, five stages, optional final 1×1 conv, classifier head)
and the block skeleton (:class:`LocalGlobalBlock`: local convs, transformer stack, norm, projection) are
shared with MobileViT v2 (:mod:`.mobilevitv2`), which builds its block on the latter.

Written for the converters (see :mod:`.blocks.patches`): unfold/fold use reshapes of rank ≤ 5 (Core ML
rejects rank 6), attention is explicit MatMuls rather than fused SDPA (Core ML converts it, and ONNX MAC
counting sees the MatMuls), and every shape except the batch is a Python int fixed by the input size.

Module names follow timm's ``mobilevit_*`` except in the shared MV2 block, whose 1×1 / depthwise / 1×1
convs are ``conv_pw`` / ``conv_dw`` / ``conv_pwl`` (timm's ByobNet calls them ``conv1_1x1`` /
``conv2_kxk`` / ``conv3_1x1``); :func:`key_map` renames them.

Nothing here is multi-branch: the reparameterize stage leaves the model as it is, and the fuse stage folds
every conv-BN pair (stem, MV2 convs, the block's local, projection and fusion convs, final conv).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvNorm, InvertedResidual, Mlp, TokenSelfAttention, TransformerLayer, fold_patches, unfold_patches
from .head import ClassifierHead
from .spec import ModelSpec, ReferenceSize

# cvnets-trained MobileViT (v1 and v2) checkpoints take 256 px RGB scaled to [0, 1] without mean/std
# normalization (timm's cfg): the spec fields both versions share.
CVNETS_INPUT = {"input_size": 256, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

# timm (ByobNet) name → ours, per dotted path component, for the shared InvertedResidual block.
MV2_RENAMES: dict[str, str] = {"conv1_1x1": "conv_pw", "conv2_kxk": "conv_dw", "conv3_1x1": "conv_pwl"}


def rename_components(state: Mapping[str, torch.Tensor], renames: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Rename whole dotted components of every key (``a.conv1_1x1.b`` → ``a.conv_pw.b``); keys only.

    Args:
        state: a state dict.
        renames: component → new component.

    Returns:
        A new dict holding the same tensor objects under the renamed keys.

    Raises:
        ValueError: two keys would map to the same name.
    """
    mapped = {".".join(renames.get(part, part) for part in key.split(".")): value for key, value in state.items()}
    if len(mapped) != len(state):
        raise ValueError("renaming would merge distinct keys; the state dict mixes two naming schemes")
    return mapped


def key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a timm ``mobilevit_*`` state dict onto ours: the MV2 convs get their :data:`MV2_RENAMES` names.

    Keys only; every other key (and a state dict already in our naming) passes through unchanged.

    Args:
        state: timm's state dict.

    Returns:
        A new dict with the same tensors under our module names.
    """
    return rename_components(state, MV2_RENAMES)


def patch_grid(size: int, patch: int) -> int:
    """Number of patches along a side of ``size`` pixels (the map is resized up to a whole number)."""
    return math.ceil(size / patch)


class LocalGlobalBlock(nn.Module):
    """What the MobileViT v1 and v2 blocks share: local convs, a transformer stack, its norm, a projection.

    ``conv_kxk`` (3×3 conv-BN-act) and ``conv_1x1`` (1×1 conv to the token width ``d``) model locally;
    ``transformer`` stacks ``depth`` pre-norm :class:`TransformerLayer` layers and ``norm`` follows it; ``conv_proj``
    (1×1 conv-BN, optional activation) maps ``d`` back to ``chs``. Each subclass's ``forward`` places the
    unfold/fold around :meth:`mix` (and v1 adds its fusion conv).

    Args:
        chs: input and output channels.
        transformer_dim: token width ``d``.
        depth: transformer layers.
        patch_size: square patch side.
        norm_layer: ``norm_layer(d)`` builds the two norms of each layer and the final norm.
        attn_layer: ``attn_layer(d)`` builds the token mixer of each layer.
        mlp_layer: ``mlp_layer(d)`` builds the MLP of each layer.
        local_groups: groups of the 3×3 local conv (``chs`` makes it depthwise).
        act_layer: activation of the local conv.
        proj_act_layer: activation of the projection, or ``None`` for none.
    """

    def __init__(
        self,
        chs: int,
        transformer_dim: int,
        depth: int,
        patch_size: int,
        *,
        norm_layer: Callable[[int], nn.Module],
        attn_layer: Callable[[int], nn.Module],
        mlp_layer: Callable[[int], nn.Module],
        local_groups: int = 1,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
        proj_act_layer: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        d = transformer_dim
        self.patch_size = patch_size
        self.conv_kxk = ConvNorm(chs, chs, 3, groups=local_groups, act_layer=act_layer)
        self.conv_1x1 = nn.Conv2d(chs, d, 1, bias=False)
        layers = (TransformerLayer(norm_layer(d), attn_layer(d), norm_layer(d), mlp_layer(d)) for _ in range(depth))
        self.transformer = nn.Sequential(*layers)
        self.norm = norm_layer(d)
        self.conv_proj = ConvNorm(d, chs, 1, act_layer=proj_act_layer)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """Local representation: ``conv_1x1(conv_kxk(x))``, ``chs`` → ``d`` channels."""
        return self.conv_1x1(self.conv_kxk(x))

    def mix(self, tokens: torch.Tensor) -> torch.Tensor:
        """Global representation: the transformer stack, then the final norm (layout as the layers expect)."""
        return self.norm(self.transformer(tokens))


class MobileViTBlock(LocalGlobalBlock):
    """MobileViT v1 block: local conv, unfold, transformer, fold, projection, fusion with the input.

    LayerNorm, multi-head :class:`TokenSelfAttention` and a linear :class:`Mlp` on channels-last tokens.

    Args:
        chs: input and output channels.
        transformer_dim: token width ``d``.
        depth: transformer layers.
        patch_size: square patch side.
        num_heads: attention heads (``d`` must be a multiple).
        mlp_ratio: MLP expansion.
        act_layer: activation of the convs and the MLP.
    """

    def __init__(
        self,
        chs: int,
        transformer_dim: int,
        depth: int,
        patch_size: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__(
            chs,
            transformer_dim,
            depth,
            patch_size,
            norm_layer=nn.LayerNorm,
            attn_layer=lambda d: TokenSelfAttention(d, head_dim=d // num_heads, qkv_bias=True),
            mlp_layer=lambda d: Mlp(d, int(d * mlp_ratio), act_layer),
            act_layer=act_layer,
            proj_act_layer=act_layer,
        )
        self.conv_fusion = ConvNorm(2 * chs, chs, 3, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.local(x)
        b, d, h, w = x.shape
        p = self.patch_size
        num_h, num_w = patch_grid(h, p), patch_grid(w, p)
        # A map that does not tile into whole patches is resized up and back (as timm/cvnets do); the
        # sizes are Python ints fixed by the input size, so the branch is static under torch.export.
        resize = (num_h * p, num_w * p) != (h, w)
        if resize:
            x = F.interpolate(x, size=(num_h * p, num_w * p), mode="bilinear", align_corners=False)
        patches = unfold_patches(x, p, p)  # (B, d, P, N)
        n = num_h * num_w
        tokens = patches.permute(0, 2, 3, 1).reshape(b * p * p, n, d)  # (B·P, N, d): attention over N
        tokens = self.mix(tokens)
        x = fold_patches(tokens.reshape(b, p * p, n, d).permute(0, 3, 1, 2), p, p, num_h, num_w)
        if resize:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.conv_fusion(torch.cat((shortcut, self.conv_proj(x)), dim=1))


class MobileViTNet(nn.Module):
    """Stem (3×3 stride-2 conv-BN-SiLU), five stages, optional 1×1 conv-BN-SiLU, classifier head.

    Stage 0 is one MV2 block at stride 1; stage 1 is MV2 blocks, the first at stride 2; stages 2–4 are
    an MV2 block at stride 2 followed by ``vit_block(stage, channels)``.

    Args:
        stem_chs: stem output channels.
        widths: output channels of the five stages.
        stage1_depth: MV2 blocks in stage 1.
        expansion: MV2 expansion.
        vit_block: builds the global block of stages 2–4 from ``(stage index 0..2, channels)``.
        num_features: channels of the final 1×1 conv, or ``None`` for no final conv.
        num_classes: classifier outputs.
    """

    def __init__(
        self,
        stem_chs: int,
        widths: Sequence[int],
        stage1_depth: int,
        expansion: float,
        vit_block: Callable[[int, int], nn.Module],
        num_features: int | None,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"MobileViT has 5 stages, got {len(widths)} widths")
        self.stem = ConvNorm(3, stem_chs, 3, stride=2, act_layer=nn.SiLU)
        mv2 = partial(InvertedResidual, expansion=expansion, act_layer=nn.SiLU)
        stages = [[mv2(stem_chs, widths[0])]]
        stages.append([mv2(widths[0], widths[1], 2)] + [mv2(widths[1], widths[1]) for _ in range(stage1_depth - 1)])
        for i, chs in enumerate(widths[2:]):
            stages.append([mv2(widths[i + 1], chs, 2), vit_block(i, chs)])
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self.final_conv = ConvNorm(widths[-1], num_features, 1, act_layer=nn.SiLU) if num_features else nn.Identity()
        self.head = ClassifierHead(num_features or widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_conv(self.stages(self.stem(x))))


@dataclass(frozen=True)
class MobileViTConfig:
    """Architecture of one MobileViT v1 variant.

    Attributes:
        widths: output channels of the five stages.
        transformer_dims: token width of the MobileViT blocks in stages 2–4.
        num_features: channels of the final 1×1 conv.
        expansion: MV2 expansion.
        stem_chs: stem output channels.
        transformer_depths: transformer layers of the MobileViT blocks in stages 2–4.
        stage1_depth: MV2 blocks in stage 1.
        patch_size: square patch side.
        num_heads: attention heads.
    """

    widths: tuple[int, int, int, int, int]
    transformer_dims: tuple[int, int, int]
    num_features: int
    expansion: float = 4.0
    stem_chs: int = 16
    transformer_depths: tuple[int, int, int] = (2, 4, 3)
    stage1_depth: int = 3
    patch_size: int = 2
    num_heads: int = 4


def mobilevit(config: MobileViTConfig, num_classes: int = 1000) -> MobileViTNet:
    """Build a MobileViT v1 network from its configuration.

    Args:
        config: the variant's architecture.
        num_classes: classifier outputs.
    """

    def vit_block(stage: int, chs: int) -> MobileViTBlock:
        return MobileViTBlock(
            chs,
            config.transformer_dims[stage],
            config.transformer_depths[stage],
            config.patch_size,
            config.num_heads,
        )

    return MobileViTNet(
        config.stem_chs,
        config.widths,
        config.stage1_depth,
        config.expansion,
        vit_block,
        config.num_features,
        num_classes,
    )


SOURCE = "params and MACs measured on timm's mobilevit_* of the same name, reparameterized, at 256 px"
_mobilevit = partial(ModelSpec, family="mobilevit", builder=mobilevit, key_map=key_map, **CVNETS_INPUT)

SPECS: tuple[ModelSpec, ...] = (
    _mobilevit(
        name="mobilevit_xxs",
        config=MobileViTConfig(
            widths=(16, 24, 48, 64, 80), transformer_dims=(64, 80, 96), num_features=320, expansion=2.0
        ),
        reference=ReferenceSize(params_m=1.272, gmacs=0.407, source=SOURCE),
        timm_name="mobilevit_xxs",
    ),
    _mobilevit(
        name="mobilevit_xs",
        config=MobileViTConfig(widths=(32, 48, 64, 80, 96), transformer_dims=(96, 120, 144), num_features=384),
        reference=ReferenceSize(params_m=2.318, gmacs=1.026, source=SOURCE),
        timm_name="mobilevit_xs",
    ),
    _mobilevit(
        name="mobilevit_s",
        config=MobileViTConfig(widths=(32, 64, 96, 128, 160), transformer_dims=(144, 192, 240), num_features=640),
        reference=ReferenceSize(params_m=5.579, gmacs=2.001, source=SOURCE),
        timm_name="mobilevit_s",
    ),
)
