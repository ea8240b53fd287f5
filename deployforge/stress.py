"""Weights far from their init values, so parity checks cannot pass by accident.

Identity-like init (BN mean 0, var 1, γ 1, tiny layer scales) hides fusion bugs: a wrong fold of an
identity BN is still an identity. docs/design.md, "Parity and tolerances", fixes the distributions used here.
"""

from __future__ import annotations

import torch
from torch import nn

LAYER_SCALE_NAMES = ("gamma", "layer_scale")
# learned tables indexed per token offset; initialized to zero, so a wrong index would go unseen
BIAS_TABLE_NAMES = ("attention_biases",)


@torch.no_grad()
def stress_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Set normalization statistics/affines and layer scales far from init, in place; return ``model``.

    Running mean ~N(0, 0.1), running var ~U(0.5, 1), affine weight ~U(0.75, 1.25), bias ~N(0, 0.1)
    (LayerNorm and GroupNorm affines too); every layer-scale parameter ~U(0.1, 0.6); learned attention-bias
    tables ~N(0, 1).

    Args:
        model: any model; BatchNorms and parameters named like a layer scale are changed.
        seed: RNG seed (the draws are reproducible).
    """
    generator = torch.Generator().manual_seed(seed)

    def draw(tensor: torch.Tensor, kind: str, a: float, b: float) -> None:
        values = torch.empty(tensor.shape)
        if kind == "normal":
            values.normal_(a, b, generator=generator)
        else:
            values.uniform_(a, b, generator=generator)
        tensor.copy_(values)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            draw(module.running_mean, "normal", 0.0, 0.1)
            draw(module.running_var, "uniform", 0.5, 1.0)
            if module.weight is not None:
                draw(module.weight, "uniform", 0.75, 1.25)
                draw(module.bias, "normal", 0.0, 0.1)
        elif isinstance(module, nn.LayerNorm | nn.GroupNorm) and module.weight is not None:
            # transformer norms: a misplaced or swapped norm must change the output too
            draw(module.weight, "uniform", 0.75, 1.25)
            draw(module.bias, "normal", 0.0, 0.1)
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] in LAYER_SCALE_NAMES:
            draw(param, "uniform", 0.1, 0.6)
        elif name.rsplit(".", 1)[-1] in BIAS_TABLE_NAMES:
            draw(param, "normal", 0.0, 1.0)
    return model
