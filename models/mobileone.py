"""MobileOne (Vasu et al., 2023): a plain stack of reparameterizable depthwise and pointwise blocks.

Every stage unit is a 3×3 depthwise MobileOneBlock followed by a 1×1 pointwise MobileOneBlock, each with
``k`` over-parameterized conv-BN branches (k = 4 for S0, 1 otherwise) and ReLU; S4 adds squeeze-excitation
to the last units of the last two stages. After reparameterization each block is one conv (+ SE) + ReLU.

Module names follow timm's ``mobileone_*`` (a flat ``stages.<stage>.<block>`` index, the depthwise and
pointwise blocks of a unit in turn) except the SE module, which timm calls ``attn`` and the shared
:class:`MobileOneBlock` calls ``se``; :func:`key_map` renames it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .blocks import MobileOneBlock, SqueezeExcite
from .head import ClassifierHead
from .spec import ModelSpec, ReferenceSize

BASE_WIDTHS = (64, 128, 256, 512)
DEPTHS = (2, 8, 10, 1)  # (depthwise, pointwise) units per stage, the same for every variant
STEM_MAX_WIDTH = 64
SE_REDUCTION = 16


@dataclass(frozen=True)
class MobileOneConfig:
    """Architecture of one MobileOne variant (the paper's Table 7).

    Attributes:
        width_multipliers: α per stage; stage ``i`` has ``BASE_WIDTHS[i] · α_i`` output channels.
        num_conv_branches: over-parameterization factor k (parallel k×k conv-BN branches per block).
        se_units: per stage, how many of the last units carry squeeze-excitation in both their blocks.
    """

    width_multipliers: tuple[float, float, float, float]
    num_conv_branches: int = 1
    se_units: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def widths(self) -> tuple[int, ...]:
        """Output channels per stage."""
        return tuple(round(base * alpha) for base, alpha in zip(BASE_WIDTHS, self.width_multipliers, strict=True))


def _block(
    in_chs: int, out_chs: int, kernel_size: int, stride: int, groups: int, branches: int, se: bool
) -> MobileOneBlock:
    return MobileOneBlock(
        in_chs,
        out_chs,
        kernel_size,
        stride=stride,
        groups=groups,
        num_conv_branches=branches,
        se=SqueezeExcite(out_chs, out_chs // SE_REDUCTION) if se else None,
        act_layer=nn.ReLU,
    )


def _init_conv_weights(module: nn.Module) -> None:
    # He-normal over fan-out for every conv, as the reference (timm ByobNet) does; biases and the classifier
    # keep PyTorch's defaults (non-zero, so random-weight runs exercise the bias paths). Not cosmetic: with
    # PyTorch's default conv init and stressed BN statistics, S4's SE gate logits land at |z| ≈ 10–40, where
    # sigmoid(z) amplifies float32 rounding about 2× per SE block: float32 runs of the same random-weight S4
    # drift 1e-4 … 4e-3 (rel-L2) from float64, so eager, fused and ONNX disagree by that much and no 1e-5
    # parity check can pass. This init saturates the gates (|z| ~ 1e8), which is benign in float32
    # (activations grow large instead; see "Parity and tolerances" in docs/design.md on conditioning weights
    # before FP16 checks).
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))


class MobileOne(nn.Module):
    """MobileOne classifier.

    Args:
        config: the variant's architecture.
        num_classes: classifier outputs.
    """

    def __init__(self, config: MobileOneConfig, num_classes: int = 1000) -> None:
        super().__init__()
        k = config.num_conv_branches
        in_chs = min(STEM_MAX_WIDTH, config.widths[0])
        # The stem is a single-branch block in every variant; only the stage blocks are over-parameterized.
        self.stem = _block(3, in_chs, 3, stride=2, groups=1, branches=1, se=False)
        stages = []
        for depth, width, se_units in zip(DEPTHS, config.widths, config.se_units, strict=True):
            blocks: list[nn.Module] = []
            for i in range(depth):
                se = i >= depth - se_units
                blocks.append(_block(in_chs, in_chs, 3, stride=2 if i == 0 else 1, groups=in_chs, branches=k, se=se))
                blocks.append(_block(in_chs, width, 1, stride=1, groups=1, branches=k, se=se))
                in_chs = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(in_chs, num_classes)
        self.apply(_init_conv_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


_TIMM_SE = re.compile(r"^(stages\.\d+\.\d+)\.attn\.")


def key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a timm ``mobileone_*`` state dict onto ours: ``stages.i.j.attn.*`` becomes ``stages.i.j.se.*``.

    Keys only; every other key (and a state dict already in our naming) passes through unchanged.

    Args:
        state: timm's state dict (train-time, multi-branch form).

    Returns:
        A new dict with the same tensors under our module names.
    """
    return {_TIMM_SE.sub(r"\1.se.", key): value for key, value in state.items()}


INPUT_SIZE = 224
SOURCE = (
    "params and MACs measured on timm's mobileone_* of the same name, reparameterized, at 224 px; "
    "published figures from the MobileOne paper, Table 9 (they agree with the measured ones)"
)
_mobileone = partial(ModelSpec, family="mobileone", builder=MobileOne, input_size=INPUT_SIZE, key_map=key_map)

SPECS: tuple[ModelSpec, ...] = (
    _mobileone(
        name="mobileone_s0",
        config=MobileOneConfig(width_multipliers=(0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
        reference=ReferenceSize(
            params_m=2.079, gmacs=0.275, published_params_m=2.1, published_gmacs=0.275, source=SOURCE
        ),
        timm_name="mobileone_s0",
    ),
    _mobileone(
        name="mobileone_s1",
        config=MobileOneConfig(width_multipliers=(1.5, 1.5, 2.0, 2.5)),
        reference=ReferenceSize(
            params_m=4.765, gmacs=0.825, published_params_m=4.8, published_gmacs=0.825, source=SOURCE
        ),
        timm_name="mobileone_s1",
    ),
    _mobileone(
        name="mobileone_s2",
        config=MobileOneConfig(width_multipliers=(1.5, 2.0, 2.5, 4.0)),
        reference=ReferenceSize(
            params_m=7.808, gmacs=1.298, published_params_m=7.8, published_gmacs=1.299, source=SOURCE
        ),
        timm_name="mobileone_s2",
    ),
    _mobileone(
        name="mobileone_s3",
        config=MobileOneConfig(width_multipliers=(2.0, 2.5, 3.0, 4.0)),
        reference=ReferenceSize(
            params_m=10.078, gmacs=1.896, published_params_m=10.1, published_gmacs=1.896, source=SOURCE
        ),
        timm_name="mobileone_s3",
    ),
    _mobileone(
        name="mobileone_s4",
        config=MobileOneConfig(width_multipliers=(3.0, 3.5, 3.5, 4.0), se_units=(0, 0, 5, 1)),
        reference=ReferenceSize(
            params_m=14.838, gmacs=2.979, published_params_m=14.8, published_gmacs=2.978, source=SOURCE
        ),
        timm_name="mobileone_s4",
    ),
)
