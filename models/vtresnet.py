"""VT-ResNet (Wu et al., "Visual Transformers", 2020): ResNet-18/34 with its last stage made of visual transformers.

The ResNet stem and the BasicBlock stages conv2_x … conv4_x are kept; conv5_x (2 BasicBlocks in ResNet-18,
3 in ResNet-34, stride 2) is replaced by as many visual-transformer modules working on the 14×14 map (no
downsampling). Each module turns the map into ``L`` tokens (a filter tokenizer in the first module, recurrent
tokenizers after it), runs one transformer layer on them and projects them back onto the map; the classifier
averages the last module's tokens. The layout and every choice the paper leaves open follow configuration A of
the family's fact sheet (see ``docs/_models_vtresnet.md``).

Backbone module names differ from timm's ``resnet*`` (the conv-BN pairs are shared :class:`ConvNorm`
blocks); :func:`resnet_key_map` maps a timm ResNet state dict onto the stem and the three kept stages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .blocks import ConvNorm, Mlp, TransformerLayer
from .blocks.visual_tokens import FilterTokenizer, RecurrentTokenizer, TokenAttention, TokenProjector
from .spec import ModelSpec, ReferenceSize

STEM_CHS = 64
STAGE_CHS = (64, 128, 256)  # conv2_x … conv4_x


@dataclass(frozen=True)
class VTResNetConfig:
    """Architecture of one VT-ResNet variant.

    Attributes:
        depths: BasicBlocks in conv2_x, conv3_x and conv4_x (those of the ResNet).
        modules: visual-transformer modules replacing conv5_x (as many as its BasicBlocks).
        tokens: visual tokens ``L`` per module.
        token_chs: token channels ``C_T``.
        chs: feature-map channels ``C`` inside the VT stage (the first projector widens 256 → C).
        heads: attention heads of the tokenizers, the token attention and the projectors.
        groups: groups of the pixel-wise 1×1 convs (tokenizer value and key, projector query).
        attn_groups: groups of the token attention's query, key and value projections.
        position_encoding: tokenizers append the position encoding of each token's attention map.
        last_projector: build the last module's projector back onto the map (configuration A has it, so
            checkpoints trained with it load strictly). Its output reaches no classifier (the head reads the
            tokens), so the forward never runs it and no exported graph holds it.
    """

    depths: tuple[int, int, int]
    modules: int
    tokens: int = 16
    token_chs: int = 1024
    chs: int = 512
    heads: int = 16
    groups: int = 16
    attn_groups: int = 8
    position_encoding: bool = True
    last_projector: bool = True


class BasicBlock(nn.Module):
    """ResNet BasicBlock: ``relu(conv2(conv1(x)) + shortcut(x))``, 3×3 conv-BN pairs, 1×1 conv-BN shortcut.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: stride of the first conv (and of the shortcut).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs, 3, stride=stride, act_layer=nn.ReLU)
        self.conv2 = ConvNorm(out_chs, out_chs, 3)
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = ConvNorm(in_chs, out_chs, 1, stride=stride) if needs_projection else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def resnet_stage(in_chs: int, out_chs: int, depth: int, stride: int) -> nn.Sequential:
    """``depth`` BasicBlocks; the first one changes the width and strides.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        depth: number of blocks.
        stride: stride of the first block.
    """
    return nn.Sequential(
        *(BasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1) for i in range(depth))
    )


class VisualTransformer(nn.Module):
    """One VT module: tokenizer → transformer layer → projector (``T_out``, and ``X_out`` when it projects).

    Args:
        in_chs: channels of the input map.
        config: the variant's architecture.
        recurrent: tokenize with the previous module's tokens (every module but the first).
        project: build the projector back onto the map.
    """

    def __init__(self, in_chs: int, config: VTResNetConfig, recurrent: bool, project: bool) -> None:
        super().__init__()
        c, ct = config.chs, config.token_chs
        if recurrent:
            if in_chs != c:
                raise ValueError(f"a recurrent tokenizer reads the {c}-channel map, got {in_chs}")
            self.tokenizer = RecurrentTokenizer(c, ct, config.heads, config.groups, config.position_encoding)
        else:
            self.tokenizer = FilterTokenizer(in_chs, config.tokens, ct, config.groups, config.position_encoding)
        # Eqs. 3-4 of the paper: T' = T + attention(T), T_out = T' + ReLU(T'·F1)·F2, with no normalization
        self.transformer = TransformerLayer(
            nn.Identity(), TokenAttention(ct, config.heads, config.attn_groups), nn.Identity(), Mlp(ct, ct, nn.ReLU)
        )
        self.projector = TokenProjector(in_chs, c, ct, config.heads, config.groups) if project else None

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor | None = None, project: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Map ``x`` and the previous tokens (``None`` for the first module) → ``(X_out or None, T_out)``.

        ``project=False`` skips the projector (``X_out`` is ``None``): the last module's map is never read.
        """
        tokens = self.tokenizer(x) if tokens is None else self.tokenizer(x, tokens)
        tokens = self.transformer(tokens)
        return (self.projector(x, tokens) if project and self.projector is not None else None), tokens


class VTResNet(nn.Module):
    """VT-ResNet classifier.

    Args:
        config: the variant's architecture.
        num_classes: classifier outputs.
    """

    def __init__(self, config: VTResNetConfig, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvNorm(3, STEM_CHS, 7, stride=2, act_layer=nn.ReLU), nn.MaxPool2d(3, stride=2, padding=1)
        )
        stages, in_chs = [], STEM_CHS
        for i, (depth, out_chs) in enumerate(zip(config.depths, STAGE_CHS, strict=True)):
            stages.append(resnet_stage(in_chs, out_chs, depth, stride=1 if i == 0 else 2))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        vts = []
        for i in range(config.modules):
            last = i == config.modules - 1
            vts.append(VisualTransformer(in_chs, config, recurrent=i > 0, project=not last or config.last_projector))
            in_chs = config.chs
        self.vt = nn.ModuleList(vts)
        self.fc = nn.Linear(config.token_chs, num_classes)
        self.stem.apply(_init_resnet_conv)
        self.stages.apply(_init_resnet_conv)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 14×14 (at 224 px) 256-channel map the VT stage reads: stem and conv2_x … conv4_x."""
        return self.stages(self.stem(x))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last module's tokens ``(B, L, C_T)``."""
        features, tokens = self.forward_features(x), None
        for i, module in enumerate(self.vt):
            projected, tokens = module(features, tokens, project=i < len(self.vt) - 1)
            features = projected if projected is not None else features
        return tokens

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits from tokens ``(B, L, C_T)``: average over the tokens, then the linear classifier."""
        return self.fc(tokens.mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_tokens(x))


def _init_resnet_conv(module: nn.Module) -> None:
    # Variance-preserving normal init (std 1/√fan_in, LeCun's) for the ResNet convs, the VT stage keeping PyTorch's
    # defaults. Not cosmetic: test weights are random with stressed BatchNorm statistics, so no BN renormalizes.
    # With torchvision's He init (ReLU gain √2) compounded over 16 residual blocks, ResNet-34's map reaches a
    # spread of 1e2-1e3, the tokenizer's and transformer's softmax logits saturate, and float32 rounding (~1e-7)
    # is amplified to 1e-4-1e-3 between mathematically equal graphs (fused vs not): no 1e-5 parity check can
    # pass. PyTorch's default init (std 1/√(3·fan_in)) shrinks the map to ~0.4, near the classifier's bias.
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")


_TIMM_BLOCK = re.compile(r"^layer([1-3])\.(\d+)\.(conv1|bn1|conv2|bn2|downsample\.0|downsample\.1)\.")
_TIMM_BLOCK_PARTS = {
    "conv1": "conv1.conv",
    "bn1": "conv1.bn",
    "conv2": "conv2.conv",
    "bn2": "conv2.bn",
    "downsample.0": "shortcut.conv",
    "downsample.1": "shortcut.bn",
}
_TIMM_STEM = {"conv1.": "stem.0.conv.", "bn1.": "stem.0.bn."}


def resnet_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a timm/torchvision ``resnet18``/``resnet34`` state dict onto VT-ResNet's stem and kept stages.

    conv5_x (``layer4``) and the classifier have no counterpart and are left out.

    Args:
        state: the ResNet's state dict.

    Returns:
        A new dict of the stem and ``layer1`` … ``layer3`` tensors under our module names.
    """
    mapped = {}
    for key, value in state.items():
        block = _TIMM_BLOCK.match(key)
        if block is not None:
            stage, index, part = block.groups()
            mapped[f"stages.{int(stage) - 1}.{index}.{_TIMM_BLOCK_PARTS[part]}.{key[block.end() :]}"] = value
            continue
        for prefix, ours in _TIMM_STEM.items():
            if key.startswith(prefix):
                mapped[ours + key[len(prefix) :]] = value
    return mapped


INPUT_SIZE = 224
SOURCE = (
    "configuration A of the VT-ResNet fact sheet (shared/families/vtresnet.md): {a_params} M params; "
    "{a_gmacs} G MACs measured on a reference model with torch's flop counter, less the {dead} its last-module "
    "projector computes there, which we build but never run (its output reaches no classifier); published "
    "figures from the paper's Table 2 (default recipe)"
)
# The fact sheet's O6 row: the last module's projector is 1.06 M params / 23.2 M MACs (C = 512, C_T = 1024).
_DEAD_PROJECTOR = "0.0232 G"
_vtresnet = partial(ModelSpec, family="vtresnet", builder=VTResNet, input_size=INPUT_SIZE, timm_name=None)

SPECS: tuple[ModelSpec, ...] = (
    _vtresnet(
        name="vt_resnet18",
        config=VTResNetConfig(depths=(2, 2, 2), modules=2),
        reference=ReferenceSize(
            params_m=11.97,
            gmacs=1.556,
            published_params_m=11.6,
            published_gmacs=1.579,
            source=SOURCE.format(a_params=11.97, a_gmacs=1.579, dead=_DEAD_PROJECTOR),
        ),
    ),
    _vtresnet(
        name="vt_resnet34",
        config=VTResNetConfig(depths=(3, 4, 6), modules=3),
        reference=ReferenceSize(
            params_m=21.91,
            gmacs=3.263,
            published_params_m=21.8,
            published_gmacs=3.299,
            source=SOURCE.format(a_params=21.91, a_gmacs=3.286, dead=_DEAD_PROJECTOR),
        ),
    ),
)
