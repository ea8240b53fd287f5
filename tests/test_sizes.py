"""Sizes: params and MACs of the reparameterized models against the registry; ONNX graph structure."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch
from torch import nn

from deployforge.fuse import fuse_batchnorm
from deployforge.measure import onnx_macs, torch_macs, torch_params
from deployforge.models.blocks import Reparameterizable
from deployforge.parity import TOLERANCES, compare
from deployforge.registry import get_spec, list_models
from deployforge.reparam import reparameterize, reparameterize_structure
from deployforge.targets.onnx import export_onnx, run_onnx
from deployforge.trace import trace

NAMES = [s.name for s in list_models()]
# ONNX export of the big variants is the long part of this file
ONNX_MODELS = [
    pytest.param(s.name, marks=pytest.mark.slow) if s.reference.params_m > 20 else s.name for s in list_models()
]


@pytest.mark.parametrize("name", NAMES)
def test_reparameterized_params_match_registry(name, stressed_original):
    spec = get_spec(name)
    merged, _ = reparameterize(stressed_original(name))
    params = torch_params(merged)
    expected = spec.reference.params_m
    assert params == pytest.approx(expected * 1e6, rel=0.01), f"{params / 1e6:.3f} M vs {expected} M"
    # the export counts them on a weightless copy: the same architecture, so exactly the same count
    skeleton = reparameterize_structure(stressed_original(name))
    assert torch_params(skeleton) == params
    shapes = {k: v.shape for k, v in skeleton.state_dict().items()}
    assert shapes == {k: v.shape for k, v in merged.state_dict().items()}
    assert all(p.device.type == "cpu" for p in stressed_original(name).parameters()), "the input was moved"
    train_time = torch_params(stressed_original(name))
    if any(isinstance(m, Reparameterizable) for m in stressed_original(name).modules()):
        # the train-time model is bigger: reparameterizing removed the extra branches
        assert train_time > params
    else:
        # single-path families (MobileViT): nothing to merge, the stage must not change the parameters
        assert train_time == params


@pytest.mark.parametrize("name", NAMES)
def test_reparameterized_macs_match_registry(name, stressed_original):
    spec = get_spec(name)
    merged, _ = reparameterize(stressed_original(name))
    example = torch.zeros(1, 3, spec.input_size, spec.input_size)
    macs = torch_macs(merged, example)
    expected = spec.reference.gmacs
    assert macs == pytest.approx(expected * 1e9, rel=0.01), f"{macs / 1e9:.4f} G vs {expected} G"


@pytest.mark.parametrize("name", ["fastvit_t8", "mobileone_s0", "mobilevit_xxs", "mobilevitv2_050"])
def test_torch_macs_are_those_of_a_real_forward(name, stressed_original, make_inputs):
    """torch_macs counts on a weightless copy: the count of the same counter over a real forward."""
    from torch.utils.flop_counter import FlopCounterMode

    model, example = stressed_original(name), make_inputs(batch=2)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    assert torch_macs(model, example) == counter.get_total_flops() // 2 // 2
    assert all(p.device.type == "cpu" for p in model.parameters()) and not model.training


# ------------------------------------------------------------------------------------------------ ONNX


def _onnx_of(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    return export_onnx(trace(model, example), example)


def _op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


@pytest.fixture(scope="module", params=ONNX_MODELS)
def deployed(request, stressed_original, make_inputs, input_side):
    """``(name, deployed torch model, its ONNX)``: fuse → reparameterize → trace → export at ``input_side``."""
    name = request.param
    example = make_inputs(batch=2, size=input_side(name))
    fused, _ = fuse_batchnorm(stressed_original(name), example)
    merged, _ = reparameterize(fused)
    return name, merged, _onnx_of(merged, example)


def test_onnx_macs_equal_torch_macs(deployed, make_inputs, input_side):
    name, merged, graph = deployed
    from_torch = torch_macs(merged, make_inputs(batch=1, size=input_side(name)))
    from_onnx = onnx_macs(graph)
    assert from_torch > 0
    assert from_onnx == pytest.approx(from_torch, rel=0.005), f"onnx {from_onnx} vs torch {from_torch}"


def test_onnx_matches_the_multi_branch_original(deployed, stressed_original, make_inputs, input_side):
    name, _, graph = deployed
    inputs = make_inputs(batch=3, size=input_side(name))
    with torch.no_grad():
        reference = stressed_original(name)(inputs).numpy()
    outputs = run_onnx(graph.SerializeToString(), inputs.numpy())
    assert compare(outputs, reference, TOLERANCES.onnx).ok, compare(outputs, reference, TOLERANCES.onnx)


def test_onnx_batch_dimension_is_symbolic(deployed):
    name, _, graph = deployed
    for value in [*graph.graph.input, *graph.graph.output]:
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.HasField("dim_param") and batch.dim_param, f"{name}: {value.name} has a fixed batch {batch}"
        assert not batch.HasField("dim_value"), f"{name}: {value.name} batch is {batch.dim_value}"


def test_reparameterized_onnx_has_no_batchnorm(deployed):
    _, _, graph = deployed
    ops = _op_counts(graph)
    assert ops["Conv"] > 0
    assert ops["BatchNormalization"] == 0


def test_fastvit_t8_one_conv_per_merged_block(stressed_original, make_inputs):
    original = stressed_original("fastvit_t8")
    example = make_inputs(batch=2)
    fused, _ = fuse_batchnorm(original, example)
    merged, _ = reparameterize(fused)
    deployed_convs = _op_counts(_onnx_of(merged, example))["Conv"]
    multi = _op_counts(_onnx_of(original, example))

    torch_convs = sum(isinstance(m, nn.Conv2d) for m in merged.modules())
    assert deployed_convs == torch_convs
    assert deployed_convs < multi["Conv"]
    assert multi["BatchNormalization"] > 0, "the multi-branch graph keeps its BN identity branches"
