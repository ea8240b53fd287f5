"""Mobile-Former (Chen et al., CVPR 2022): a MobileNet and a few-token transformer in parallel, bridged both ways.

Layout from the authors' code (AAboys/MobileFormer, ``mobile_former.py`` and ``dna_blocks.py``) as recorded in
the family fact sheet: stem (3×3 s2 conv-BN-ReLU6), a "bneck-lite" block (depthwise 3×3 with channel
multiplier, ReLU6, 1×1 linear), then Mobile-Former blocks. Each block updates the tokens from its input map
(:class:`~.blocks.bridge.MobileToFormer`), runs the :class:`~.blocks.bridge.Former` on them, runs its mobile
sub-block with :class:`~.blocks.dynamic_relu.DynamicReLU` activations driven by token 0, adds the identity
(stride 1, same width) and lets the map read the tokens (:class:`~.blocks.bridge.FormerToMobile`). Stride-1
sub-blocks are pw-dw-pw; stride-2 ones dw-pw-dw-pw with an inner residual around the second dw-pw pair. A
last Mobile→Former step updates the tokens once more; the head concatenates the pooled 1×1-conv features
(ReLU6, then h-swish after pooling) with token 0, then ``Linear → BN1d → h-swish → dropout → Linear``.

Every BatchNorm follows a conv or linear layer that only it reads (the BN1d reads a ``(B, F)`` linear), so the
fuse stage folds all of them and no block needs a ``reparameterize()``. The tokens are a ``(T, d)`` parameter
broadcast to the batch with ``expand`` (the batch stays symbolic in ``torch.export`` and ONNX).

Module names are ours; :func:`key_map` maps the authors' state dict (``features.i.conv1.0.weight``,
``local_global.q.bias``, ...) onto them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from .blocks.bridge import Former, FormerToMobile, MobileToFormer
from .blocks.channel_shuffle import ChannelShuffle
from .blocks.conv_norm import ConvNorm
from .blocks.dynamic_relu import DynamicReLU
from .spec import ModelSpec, ReferenceSize

DOWN_SECOND_EXPANSION = 4  # stride-2 blocks: the second depthwise conv expands out → 4·out in every variant
HEAD_EXPANSION = 6  # the head's 1×1 conv: C → 6·C


@dataclass(frozen=True)
class BlockConfig:
    """One block of the authors' table (``e1, c, s``; every block has ``n = 1``).

    Attributes:
        out_chs: output channels ``c``.
        stride: 1 (pw-dw-pw sub-block) or 2 (dw-pw-dw-pw sub-block; for the lite block, its depthwise stride).
        expansion: ``e1``: hidden channels ``in·e1`` of the first expansion.
    """

    out_chs: int
    stride: int
    expansion: int


@dataclass(frozen=True)
class MobileFormerConfig:
    """Architecture of one Mobile-Former variant.

    Attributes:
        stem_chs: stem output channels.
        lite: the bneck-lite block after the stem.
        blocks: the Mobile-Former blocks, in order.
        num_tokens: tokens ``T``.
        token_dim: token width ``d``.
        num_features: width ``F`` of the head's hidden linear layer.
        groups: groups of every block and head 1×1 conv (channel shuffles follow them when > 1).
        drop_rate: dropout before the classifier (the authors' training setting; identity in eval).
    """

    stem_chs: int
    lite: BlockConfig
    blocks: tuple[BlockConfig, ...]
    num_tokens: int
    token_dim: int
    num_features: int
    groups: int = 1
    drop_rate: float = 0.2


def _shuffle(groups: int) -> nn.Module:
    return ChannelShuffle(groups) if groups > 1 else nn.Identity()


class BneckLite(nn.Module):
    """MicroNet's lite bottleneck: depthwise 3×3 (multiplier ``e``) → ReLU6 → [shuffle] → 1×1 linear.

    Skip when the stride is 1 and the width is kept; no token interaction.

    Args:
        in_chs: input channels.
        config: output channels, stride and channel multiplier.
        groups: groups of the 1×1 conv (the shuffle before it has ``in_chs`` groups).
    """

    def __init__(self, in_chs: int, config: BlockConfig, groups: int) -> None:
        super().__init__()
        hidden = in_chs * config.expansion
        self.has_skip = config.stride == 1 and in_chs == config.out_chs
        self.conv_dw = ConvNorm(in_chs, hidden, 3, config.stride, groups=in_chs, act_layer=nn.ReLU6)
        self.shuffle = _shuffle(in_chs if groups > 1 else 1)
        self.conv_pw = ConvNorm(hidden, config.out_chs, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pw(self.shuffle(self.conv_dw(x)))
        return x + out if self.has_skip else out


class DynamicBottleneck(nn.Module):
    """Stride-1 mobile sub-block: 1×1 → [shuffle] → DyReLU → depthwise 3×3 → DyReLU → 1×1 linear → [shuffle].

    Args:
        in_chs: input channels.
        out_chs: output channels.
        expansion: hidden channels ``in_chs · expansion``.
        token_dim: width of the token driving the dynamic ReLUs.
        groups: groups of the 1×1 convs (each followed by a shuffle with as many groups when > 1).
    """

    def __init__(self, in_chs: int, out_chs: int, expansion: int, token_dim: int, groups: int) -> None:
        super().__init__()
        hidden = in_chs * expansion
        self.conv_pw = ConvNorm(in_chs, hidden, 1, groups=groups)
        self.shuffle_pw = _shuffle(groups)
        self.act_pw = DynamicReLU(token_dim, hidden)
        self.conv_dw = ConvNorm(hidden, hidden, 3, groups=hidden)
        self.act_dw = DynamicReLU(token_dim, hidden)
        self.conv_pwl = ConvNorm(hidden, out_chs, 1, groups=groups)
        self.shuffle_pwl = _shuffle(groups)

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = self.act_pw(self.shuffle_pw(self.conv_pw(x)), token)
        x = self.act_dw(self.conv_dw(x), token)
        return self.shuffle_pwl(self.conv_pwl(x))


class DynamicDownBottleneck(nn.Module):
    """Stride-2 mobile sub-block: ``u = pw1(DyReLU(dw1(x)))``, then ``u + pw2(DyReLU(dw2(u)))``.

    ``dw1`` is a stride-2 depthwise 3×3 with channel multiplier ``expansion``, ``dw2`` a stride-1 one with
    multiplier 4; ``pw1``/``pw2`` are 1×1 linear projections to ``out_chs``. Each depthwise conv is followed by
    a shuffle (with as many groups as it has) when the 1×1 convs are grouped.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        expansion: channel multiplier of the first depthwise conv.
        token_dim: width of the token driving the dynamic ReLUs.
        groups: groups of the 1×1 convs.
    """

    def __init__(self, in_chs: int, out_chs: int, expansion: int, token_dim: int, groups: int) -> None:
        super().__init__()
        hidden1, hidden2 = in_chs * expansion, out_chs * DOWN_SECOND_EXPANSION
        self.conv_dw1 = ConvNorm(in_chs, hidden1, 3, stride=2, groups=in_chs)
        self.shuffle_dw1 = _shuffle(in_chs if groups > 1 else 1)
        self.act_dw1 = DynamicReLU(token_dim, hidden1)
        self.conv_pw1 = ConvNorm(hidden1, out_chs, 1, groups=groups)
        self.conv_dw2 = ConvNorm(out_chs, hidden2, 3, groups=out_chs)
        self.shuffle_dw2 = _shuffle(out_chs if groups > 1 else 1)
        self.act_dw2 = DynamicReLU(token_dim, hidden2)
        self.conv_pw2 = ConvNorm(hidden2, out_chs, 1, groups=groups)

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        u = self.conv_pw1(self.act_dw1(self.shuffle_dw1(self.conv_dw1(x)), token))
        return u + self.conv_pw2(self.act_dw2(self.shuffle_dw2(self.conv_dw2(u)), token))


class MobileFormerBlock(nn.Module):
    """Mobile→Former, Former, the mobile sub-block (its dynamic ReLUs driven by token 0), skip, Former→Mobile.

    The identity is added before Former→Mobile (the authors' ``gbr_before_skip=False``); stride-2 blocks have
    no outer identity (their sub-block has an inner one).

    Args:
        in_chs: input channels.
        config: output channels, stride (1: pw-dw-pw, 2: dw-pw-dw-pw) and first expansion.
        token_dim: token width.
        groups: groups of the 1×1 convs.
    """

    def __init__(self, in_chs: int, config: BlockConfig, token_dim: int, groups: int) -> None:
        super().__init__()
        out_chs = config.out_chs
        self.has_skip = config.stride == 1 and in_chs == out_chs
        self.mobile_to_former = MobileToFormer(in_chs, token_dim)
        self.former = Former(token_dim)
        mobile = DynamicBottleneck if config.stride == 1 else DynamicDownBottleneck
        self.mobile = mobile(in_chs, out_chs, config.expansion, token_dim, groups)
        self.former_to_mobile = FormerToMobile(out_chs, token_dim)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the new feature map and tokens for ``x`` ``(B, C, H, W)`` and ``tokens`` ``(B, T, d)``."""
        tokens = self.former(self.mobile_to_former(x, tokens))
        out = self.mobile(x, tokens[:, 0])
        if self.has_skip:
            out = out + x
        return self.former_to_mobile(out, tokens), tokens


class MobileFormerHead(nn.Module):
    """[shuffle] → 1×1 conv-BN-ReLU6 → pool → h-swish → concat token 0 → Linear-BN1d-h-swish → dropout → Linear.

    Args:
        in_chs: channels of the last feature map.
        token_dim: token width (token 0 is concatenated to the pooled features).
        num_features: width of the hidden linear layer.
        num_classes: classifier outputs.
        groups: groups of the 1×1 conv (a shuffle with as many groups precedes it when > 1).
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self, in_chs: int, token_dim: int, num_features: int, num_classes: int, groups: int, drop_rate: float
    ) -> None:
        super().__init__()
        hidden = in_chs * HEAD_EXPANSION
        self.shuffle = _shuffle(groups)
        self.conv = ConvNorm(in_chs, hidden, 1, groups=groups, act_layer=nn.ReLU6)
        self.hidden = nn.Linear(hidden + token_dim, num_features)
        self.hidden_norm = nn.BatchNorm1d(num_features)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        pooled = F.hardswish(self.conv(self.shuffle(x)).mean((2, 3)))
        hidden = F.hardswish(self.hidden_norm(self.hidden(torch.cat([pooled, token], dim=1))))
        return self.fc(self.drop(hidden))


def _init_weights(module: nn.Module) -> None:
    # The authors' conv init: N(0, √(2 / (k·k·out))), over all output channels (not divided by groups).
    # Linear layers keep PyTorch's default (the authors use N(0, 0.01) with zero biases, which makes every
    # dynamic ReLU a plain ReLU and every α gate 1 at init, hiding the token paths from random-weight tests).
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))


class MobileFormer(nn.Module):
    """Mobile-Former classifier.

    Args:
        config: the variant's architecture.
        num_classes: classifier outputs.
    """

    def __init__(self, config: MobileFormerConfig, num_classes: int = 1000) -> None:
        super().__init__()
        d = config.token_dim
        self.tokens = nn.Parameter(torch.randn(config.num_tokens, d))  # learned; N(0, 1) as nn.Embedding's init
        self.stem = ConvNorm(3, config.stem_chs, 3, stride=2, act_layer=nn.ReLU6)
        self.lite = BneckLite(config.stem_chs, config.lite, config.groups)
        blocks, in_chs = [], config.lite.out_chs
        for block in config.blocks:
            blocks.append(MobileFormerBlock(in_chs, block, d, config.groups))
            in_chs = block.out_chs
        self.blocks = nn.ModuleList(blocks)
        self.mobile_to_former = MobileToFormer(in_chs, d)
        self.head = MobileFormerHead(in_chs, d, config.num_features, num_classes, config.groups, config.drop_rate)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A copy, not a view: under no_grad a view of a parameter still reports requires_grad, and the module
        # tracker of torch.utils.flop_counter then fails on it when it is passed to a block.
        tokens = self.tokens.unsqueeze(0).expand(x.shape[0], -1, -1).clone()
        x = self.lite(self.stem(x))
        for block in self.blocks:
            x, tokens = block(x, tokens)
        tokens = self.mobile_to_former(x, tokens)
        return self.head(x, tokens[:, 0])


# ----------------------------------------------------------------------------------------- the authors' names

# Top-level prefixes: the authors' → ours.
_TOP_RENAMES = (
    ("stem.0.", "stem.conv."),
    ("stem.1.", "stem.bn."),
    ("features.0.conv.0.", "lite.conv_dw.conv."),
    ("features.0.conv.1.", "lite.conv_dw.bn."),
    ("features.0.conv.4.", "lite.conv_pw.conv."),
    ("features.0.conv.5.", "lite.conv_pw.bn."),
    ("classifier.conv.1.", "head.conv.conv."),
    ("classifier.conv.2.", "head.conv.bn."),
    ("classifier.fc.0.", "head.hidden."),
    ("classifier.fc.1.", "head.hidden_norm."),
    ("classifier.classifier.1.", "head.fc."),
)
# Inside a block (and the final ``local_global``): bridges and Former.
_BRIDGE_RENAMES = (
    ("local_global.alpha.0.", "mobile_to_former.alpha."),
    ("local_global.layer_norm.", "mobile_to_former.norm."),
    ("local_global.", "mobile_to_former."),
    ("global_block.channel_mlp.", "former.proj."),
    ("global_block.layer_norm.", "former.norm1."),
    ("global_block.ffn.0.", "former.mlp.fc1."),
    ("global_block.ffn.2.", "former.mlp.fc2."),
    ("global_block.ffn_norm.", "former.norm2."),
    ("global_block.", "former."),
    ("global_local.proj.", "former_to_mobile.v."),
    ("global_local.", "former_to_mobile."),
)
# The mobile sub-block's layers (``convN`` conv-BN pairs, ``hyperN`` dynamic-ReLU MLPs) by block kind: the
# authors' stride-1 blocks (DnaBlock) have conv1..conv3, their stride-2 blocks (DnaBlock3) conv1..conv4.
_MOBILE_RENAMES = {
    1: {"conv1": "conv_pw", "hyper1": "act_pw", "conv2": "conv_dw", "hyper2": "act_dw", "conv3": "conv_pwl"},
    2: {
        "conv1": "conv_dw1",
        "hyper1": "act_dw1",
        "conv2": "conv_pw1",
        "conv3": "conv_dw2",
        "hyper3": "act_dw2",
        "conv4": "conv_pw2",
    },
}
_BLOCK_KEY = re.compile(r"^features\.(\d+)\.(.+)$")
_MOBILE_KEY = re.compile(r"^(conv\d|hyper\d)\.(?:hyper\.)?(\d)\.(.+)$")
_SEQUENTIAL_CHILD = {"conv": {"0": "conv", "1": "bn"}, "hyper": {"0": "fc1", "2": "fc2"}}


def _rename_prefix(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for theirs, ours in renames:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return key


def _rename_in_block(rest: str, stride: int) -> str:
    mobile = _MOBILE_KEY.match(rest)
    if mobile is None:
        return _rename_prefix(rest, _BRIDGE_RENAMES)
    layer, index, tail = mobile.groups()
    child = _SEQUENTIAL_CHILD[layer.rstrip("0123456789")].get(index)
    target = _MOBILE_RENAMES[stride].get(layer)
    if child is None or target is None:
        return rest  # not a key of the released models: left as is, the strict load reports it
    return f"mobile.{target}.{child}.{tail}"


def key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state dict in the authors' naming (AAboys/MobileFormer) onto ours; keys only.

    ``tokens.weight`` (their ``nn.Embedding``) becomes ``tokens``; ``features.0`` is our ``lite`` block and
    ``features.i`` our ``blocks.{i-1}``; ``local_global`` / ``global_block`` / ``global_local`` are our
    ``mobile_to_former`` / ``former`` / ``former_to_mobile``; ``classifier`` is our ``head``. Their ``conv2``
    and ``conv3`` mean different layers in the two block kinds: a block is a stride-2 one when the state dict
    has a ``conv4`` for it. A ``module.`` prefix (a checkpoint saved from ``DataParallel``) is dropped. A state
    dict already in our naming passes through unchanged.

    Args:
        state: the authors' state dict (or ours).

    Returns:
        A new dict with the same tensors under our module names.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}
    down_blocks = {m.group(1) for m in map(_BLOCK_KEY.match, state) if m and m.group(2).startswith("conv4.")}
    mapped = {}
    for key, value in state.items():
        block = _BLOCK_KEY.match(key)
        if key == "tokens.weight":
            new = "tokens"
        elif block is not None and block.group(1) != "0":
            index = int(block.group(1))
            stride = 2 if block.group(1) in down_blocks else 1
            new = f"blocks.{index - 1}.{_rename_in_block(block.group(2), stride)}"
        else:
            new = _rename_prefix(key, _BRIDGE_RENAMES if key.startswith("local_global.") else _TOP_RENAMES)
        mapped[new] = value
    return mapped


# ------------------------------------------------------------------------------------------------- variants

INPUT_SIZE = 224
SOURCE = (
    "params and MACs measured on the authors' code (AAboys/MobileFormer at f447310, instantiated, 224 px, "
    "torch.utils.flop_counter: conv + linear + attention matmuls), ../shared/families/mobileformer.md §5; "
    "published figures from the paper (params; MAdds are the model names, 2-9 % above the measured count)"
)


def _blocks(*rows: tuple[int, int, int]) -> tuple[BlockConfig, ...]:
    """The Mobile-Former blocks of a variant from its table rows ``(out_chs, stride, expansion)``."""
    return tuple(BlockConfig(out_chs=c, stride=s, expansion=e) for c, s, e in rows)


_mobileformer = partial(
    ModelSpec, family="mobileformer", builder=MobileFormer, input_size=INPUT_SIZE, timm_name=None, key_map=key_map
)
# 52M's blocks; 26M has the same ones with grouped 1×1 convs (and shuffles).
_BLOCKS_52M = _blocks(
    (12, 1, 3),
    (24, 2, 6),
    (24, 1, 3),
    (48, 2, 6),
    (48, 1, 4),
    (64, 1, 6),
    (96, 2, 6),
    (96, 1, 6),
)

SPECS: tuple[ModelSpec, ...] = (
    _mobileformer(
        name="mobileformer_26m",
        config=MobileFormerConfig(
            stem_chs=8,
            lite=BlockConfig(out_chs=12, stride=2, expansion=3),
            blocks=_BLOCKS_52M,
            num_tokens=3,
            token_dim=128,
            num_features=1024,
            groups=4,
            drop_rate=0.1,
        ),
        reference=ReferenceSize(
            params_m=3.232788, gmacs=0.023550208, published_params_m=3.2, published_gmacs=0.026, source=SOURCE
        ),
    ),
    _mobileformer(
        name="mobileformer_52m",
        config=MobileFormerConfig(
            stem_chs=8,
            lite=BlockConfig(out_chs=12, stride=2, expansion=3),
            blocks=_BLOCKS_52M,
            num_tokens=3,
            token_dim=128,
            num_features=1024,
        ),
        reference=ReferenceSize(
            params_m=3.469092, gmacs=0.049290496, published_params_m=3.5, published_gmacs=0.052, source=SOURCE
        ),
    ),
    _mobileformer(
        name="mobileformer_96m",
        config=MobileFormerConfig(
            stem_chs=12,
            lite=BlockConfig(out_chs=12, stride=1, expansion=2),
            blocks=_blocks(
                (16, 2, 6),
                (32, 2, 6),
                (32, 1, 3),
                (64, 2, 6),
                (64, 1, 4),
                (88, 1, 6),
                (128, 2, 6),
                (128, 1, 6),
            ),
            num_tokens=4,
            token_dim=128,
            num_features=1280,
        ),
        reference=ReferenceSize(
            params_m=4.585252, gmacs=0.09201704, published_params_m=4.6, published_gmacs=0.096, source=SOURCE
        ),
    ),
    _mobileformer(
        name="mobileformer_151m",
        config=MobileFormerConfig(
            stem_chs=12,
            lite=BlockConfig(out_chs=12, stride=1, expansion=2),
            blocks=_blocks(
                (16, 2, 6),
                (16, 1, 3),
                (32, 2, 6),
                (32, 1, 3),
                (64, 2, 6),
                (64, 1, 4),
                (88, 1, 6),
                (88, 1, 6),
                (128, 2, 6),
                (128, 1, 6),
                (128, 1, 6),
            ),
            num_tokens=6,
            token_dim=192,
            num_features=1280,
        ),
        reference=ReferenceSize(
            params_m=7.595828, gmacs=0.146249168, published_params_m=7.6, published_gmacs=0.151, source=SOURCE
        ),
    ),
    _mobileformer(
        name="mobileformer_214m",
        config=MobileFormerConfig(
            stem_chs=12,
            lite=BlockConfig(out_chs=12, stride=1, expansion=2),
            blocks=_blocks(
                (20, 2, 6),
                (20, 1, 3),
                (40, 2, 6),
                (40, 1, 4),
                (80, 2, 6),
                (80, 1, 4),
                (112, 1, 6),
                (112, 1, 6),
                (160, 2, 6),
                (160, 1, 6),
                (160, 1, 6),
            ),
            num_tokens=6,
            token_dim=192,
            num_features=1600,
        ),
        reference=ReferenceSize(
            params_m=9.42592, gmacs=0.20837424, published_params_m=9.4, published_gmacs=0.214, source=SOURCE
        ),
    ),
    _mobileformer(
        name="mobileformer_294m",
        config=MobileFormerConfig(
            stem_chs=16,
            lite=BlockConfig(out_chs=16, stride=1, expansion=2),
            blocks=_blocks(
                (24, 2, 6),
                (24, 1, 4),
                (48, 2, 6),
                (48, 1, 4),
                (96, 2, 6),
                (96, 1, 4),
                (128, 1, 6),
                (128, 1, 6),
                (192, 2, 6),
                (192, 1, 6),
                (192, 1, 6),
            ),
            num_tokens=6,
            token_dim=192,
            num_features=1920,
            drop_rate=0.3,
        ),
        reference=ReferenceSize(
            params_m=11.422648, gmacs=0.28673216, published_params_m=11.4, published_gmacs=0.294, source=SOURCE
        ),
    ),
    _mobileformer(
        name="mobileformer_508m",
        config=MobileFormerConfig(
            stem_chs=24,
            lite=BlockConfig(out_chs=24, stride=1, expansion=2),
            blocks=_blocks(
                (40, 2, 6),
                (40, 1, 3),
                (72, 2, 6),
                (72, 1, 3),
                (128, 2, 6),
                (128, 1, 4),
                (176, 1, 6),
                (176, 1, 6),
                (240, 2, 6),
                (240, 1, 6),
                (240, 1, 6),
            ),
            num_tokens=6,
            token_dim=192,
            num_features=1920,
            drop_rate=0.3,
        ),
        reference=ReferenceSize(
            params_m=13.976976, gmacs=0.49846768, published_params_m=14.0, published_gmacs=0.508, source=SOURCE
        ),
    ),
)
