"""Tests that fail when the algebra is wrong: planted faults that the stressed-weights suite could miss.

- BatchNorm folds are checked with hand-set statistics (large eps, small variances, means far from zero),
  where dropping eps or the running mean is a large error, not one hidden under 1e-5.
- The stress recipe must move every statistic of every registered model (a fold that ignores the running
  mean is exact when every mean is zero).
- The parity tolerances in the code are the ones docs/design.md states.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from deployforge.fuse import fuse_batchnorm
from deployforge.models.blocks import fold_bn
from deployforge.registry import get_spec, list_models
from deployforge.stress import stress_weights

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
EXACT = 1e-6  # a correct fold in float64 is ~1e-15 off; float32 ~1e-7
WRONG = 1e-3  # every planted fault below is far above this
# layer scales by name, independently of the recipe's own list (shrinking that list must fail here)
LAYER_SCALE_NAMES = ("gamma", "layer_scale")
BIAS_TABLE_NAMES = ("attention_biases",)


def rel_l2(candidate: torch.Tensor, original: torch.Tensor) -> float:
    a, b = candidate.detach().double(), original.detach().double()
    assert b.norm() > 0
    return float((a - b).norm() / b.norm())


def set_hard_statistics(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    """Statistics where every term of the fold matters: eps 0.5, var 1e-3..1e-2, mean ±2, γ and β far from 1/0."""
    generator = torch.Generator().manual_seed(seed)
    n = bn.num_features
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    with torch.no_grad():
        bn.eps = 0.5
        bn.running_var.copy_(torch.empty(n).uniform_(1e-3, 1e-2, generator=generator))
        bn.running_mean.copy_(signs * torch.empty(n).uniform_(1.5, 2.5, generator=generator))
        bn.weight.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=generator))
        bn.bias.copy_(torch.empty(n).uniform_(-1.0, 1.0, generator=generator))


def fold_without_eps(weight, bias, bn):
    t = bn.weight / torch.sqrt(bn.running_var)
    return weight * t.reshape(-1, *[1] * (weight.dim() - 1)), bn.bias + t * (bias - bn.running_mean)


def fold_without_mean(weight, bias, bn):
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * t.reshape(-1, *[1] * (weight.dim() - 1)), bn.bias + t * bias


# --- BatchNorm fold with hand-set statistics ---------------------------------------------------------


def conv_bn_pair() -> tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True).double()
    bn = nn.BatchNorm2d(6).double()
    set_hard_statistics(bn, seed=1)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    return conv, bn.eval(), x


def linear_bn_pair() -> tuple[nn.Linear, nn.BatchNorm1d, torch.Tensor]:
    torch.manual_seed(0)
    linear = nn.Linear(5, 7, bias=True).double()
    bn = nn.BatchNorm1d(7).double()
    set_hard_statistics(bn, seed=2)
    x = torch.randn(4, 5, dtype=torch.float64)
    return linear, bn.eval(), x


def folded_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def folded_linear(_: nn.Linear, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x, weight, bias)


PAIRS = {"conv": (conv_bn_pair, folded_conv), "linear": (linear_bn_pair, folded_linear)}


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_fold_bn_is_exact_with_hard_statistics(kind, with_bias):
    make, apply_folded = PAIRS[kind]
    producer, bn, x = make()
    bias = producer.bias if with_bias else None
    if not with_bias:
        producer.bias = None
    with torch.no_grad():
        expected = bn(producer(x))
        weight, folded_bias = fold_bn(producer.weight, bias, bn)
        assert rel_l2(apply_folded(producer, weight, folded_bias, x), expected) <= EXACT


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("wrong_fold", [fold_without_eps, fold_without_mean], ids=["eps-dropped", "mean-dropped"])
def test_a_wrong_fold_is_far_off_with_hard_statistics(kind, wrong_fold):
    """The statistics above give the fold test teeth: each classic mistake is a large error."""
    make, apply_folded = PAIRS[kind]
    producer, bn, x = make()
    with torch.no_grad():
        expected = bn(producer(x))
        weight, bias = wrong_fold(producer.weight, producer.bias, bn)
        assert rel_l2(apply_folded(producer, weight, bias, x), expected) > WRONG


class ConvBnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def test_fuse_stage_is_exact_with_hard_statistics():
    torch.manual_seed(0)
    model = ConvBnNet().eval()
    set_hard_statistics(model.bn1, seed=3)
    set_hard_statistics(model.bn2, seed=4)
    x = torch.randn(2, 3, 16, 16)

    fused, report = fuse_batchnorm(model, x)

    assert sorted(report.folded) == [("conv1", "bn1"), ("conv2", "bn2")]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        expected = model(x)
        assert rel_l2(fused(x), expected) <= EXACT
        # the statistics are not identity-like: dropping the BNs altogether would be a large error
        plain = model.conv2(torch.relu(model.conv1(x)))
        assert rel_l2(plain, expected) > WRONG


# --- the stress recipe moves every statistic ---------------------------------------------------------


def moved(after: torch.Tensor, before: torch.Tensor) -> bool:
    """Every entry differs from its value before stressing."""
    return bool((after != before).all())


@pytest.mark.parametrize("name", [spec.name for spec in list_models()])  # < 1 s each, even the biggest
def test_stress_recipe_moves_every_statistic(name):
    torch.manual_seed(0)
    model = get_spec(name).build()
    before = {key: value.detach().clone() for key, value in model.state_dict().items()}
    stress_weights(model, seed=0)

    batch_norms = layer_norms = layer_scales = bias_tables = 0
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            batch_norms += 1
            mean, var = module.running_mean, module.running_var
            assert mean is not None and var is not None, f"{path}: no running statistics to fold"
            assert bool((mean != 0).all()) and not bool((mean == mean[0]).all()), f"{path}: running_mean {mean}"
            assert moved(mean, before[prefix + "running_mean"]), path
            assert not bool((var == 1).all()), f"{path}: running_var left at 1"
            assert bool(((var >= 0.5) & (var <= 1.0)).all()), f"{path}: running_var outside [0.5, 1]"
            assert module.weight is not None, f"{path}: BatchNorm without affine"
            assert moved(module.weight, torch.ones_like(module.weight)), f"{path}: weight left at 1"
            assert moved(module.bias, torch.zeros_like(module.bias)), f"{path}: bias left at 0"
        elif isinstance(module, nn.LayerNorm | nn.GroupNorm) and module.weight is not None:
            layer_norms += 1
            assert moved(module.weight, before[prefix + "weight"]), f"{path}: affine weight not moved"
            assert moved(module.bias, before[prefix + "bias"]), f"{path}: affine bias not moved"
    for key, param in model.named_parameters():
        if key.rsplit(".", 1)[-1] in LAYER_SCALE_NAMES:
            layer_scales += 1
            assert moved(param, before[key]), f"{key}: layer scale not moved"
            assert bool(((param >= 0.1) & (param <= 0.6)).all()), f"{key}: outside [0.1, 0.6]"
        elif key.rsplit(".", 1)[-1] in BIAS_TABLE_NAMES:
            bias_tables += 1
            assert moved(param, before[key]) and float(param.detach().std()) > 0.5, f"{key}: bias table left near init"

    assert batch_norms > 0, "every registered family has BatchNorms"
    family = get_spec(name).family
    if family == "fastvit":
        assert layer_scales > 0
    if family in ("mobilevit", "mobilevitv2"):
        assert layer_norms > 0
    if family == "efficientformer":
        assert layer_scales > 0 and bias_tables > 0


# --- tolerances pinned against docs/design.md --------------------------------------------------------


def design_bounds() -> dict[str, float]:
    """The ``stage | rel-L2 bound`` table of docs/design.md, "Parity and tolerances"."""
    text = DESIGN.read_text()
    section = text.split("## Parity and tolerances", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*stage\s*\|\s*rel-L2 bound\s*\|", line))
    bounds = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        stage, bound = (cell.strip().strip("`") for cell in line.strip("|").split("|"))
        bounds[stage] = float(bound)
    return bounds


def code_bounds() -> dict[str, float]:
    """The code's bound for each stage the design table names."""
    from deployforge.parity import TOLERANCES

    return {stage: TOLERANCES.for_stage(stage) for stage in design_bounds()}


def test_tolerances_match_the_design():
    assert design_bounds() == code_bounds()
    assert list(design_bounds()) == ["fuse", "reparameterize", "trace", "onnx", "coreml-fp32", "coreml-fp16"]


def test_fp16_top1_floor_matches_the_design():
    from deployforge.parity import TOLERANCES

    match = re.search(r"FP16 top-1 agreement ≥ ([0-9.]+)", DESIGN.read_text())
    assert match, "docs/design.md states the FP16 top-1 floor"
    assert TOLERANCES.min_top1_fp16 == float(match.group(1)) == 0.95


def test_a_failed_comparison_says_why():
    import numpy as np

    from deployforge.parity import compare

    original = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    assert compare(original, original, 1e-5, min_top1=0.95).failure() is None
    assert compare(original * 1.1, original, 1e-5).failure() == "rel-L2 0.1 > 1e-05"
    first_row_flipped = np.array([[1.0, 3.0, 0.0], [0.0, 2.0, 1.0]])  # rel-L2 0.76 against original
    flipped = compare(first_row_flipped, original, 1.0, min_top1=0.95)
    assert not flipped.ok and flipped.failure() == "top-1 agreement 0.5 < 0.95"
    assert compare(first_row_flipped, original, 1.0).ok  # no top-1 floor asked for: rel-L2 alone decides
    overflowed = compare(np.full_like(original, np.inf), original, 1e-2)
    assert not overflowed.ok and "not finite" in overflowed.failure()


def test_a_fixed_size_model_refuses_another_input_size():
    from dataclasses import replace

    from deployforge.errors import InvalidSetting
    from deployforge.pipeline import input_size_for

    free = get_spec("fastvit_t8")
    fixed = replace(free, fixed_input_size=True)
    assert input_size_for(free, 64) == 64 and input_size_for(free, None) == free.input_size
    assert input_size_for(fixed, None) == input_size_for(fixed, fixed.input_size) == fixed.input_size
    with pytest.raises(InvalidSetting, match=f"takes {fixed.input_size}x{fixed.input_size} inputs only") as error:
        input_size_for(fixed, 64)
    assert error.value.setting == "input_size" and "\n" not in str(error.value)
