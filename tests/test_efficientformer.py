"""EfficientFormer: timm key map, meta-blocks against timm's, attention-bias gather, fixed input size, exports.

timm initializes the attention bias table to zero, which would hide a wrong index table; ``stress_weights``
draws it from N(0, 1), so the registry-wide oracle (tests/test_oracle.py) and every comparison here see it.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import TensorProto, helper, numpy_helper
from timm.models.efficientformer import Attention, MetaBlock1d, MetaBlock2d
from torch import nn

from deployforge.fuse import fuse_batchnorm
from deployforge.models import efficientformer
from deployforge.models.blocks import LayerScale2d, MergeCount
from deployforge.models.blocks.learned_bias_attention import LearnedBiasAttention, relative_offset_index
from deployforge.models.blocks.token_layer_scale import TokenLayerScale
from deployforge.options import Precision
from deployforge.registry import get_spec, list_models
from deployforge.reparam import reparameterize
from deployforge.stress import stress_weights
from deployforge.targets.coreml import export_coreml
from deployforge.targets.onnx import export_onnx
from deployforge.trace import Traced, trace

TOL = 1e-5
NAMES = [s.name for s in list_models("efficientformer")]
BIG_PARAMS_M = 20.0
SIDE = efficientformer.INPUT_SIZE


def _case(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if get_spec(name).reference.params_m > BIG_PARAMS_M else name


@torch.no_grad()
def _stressed(module: nn.Module, seed: int = 0) -> nn.Module:
    """``stress_weights`` (bias tables included), in eval mode."""
    torch.manual_seed(seed)
    module = stress_weights(module, seed=seed)
    module.eval()  # not chained: timm's Attention.train returns None
    return module


def test_family_is_registered_with_a_fixed_input_size():
    assert NAMES == ["efficientformer_l1", "efficientformer_l3", "efficientformer_l7"]
    for name in NAMES:
        spec = get_spec(name)
        assert spec.timm_name == name and spec.key_map is efficientformer.key_map
        assert spec.fixed_input_size and spec.input_size == SIDE


# ------------------------------------------------------------------------------------------- key map


@pytest.mark.parametrize("name", NAMES)
def test_key_map_loads_timm_strictly_and_reshapes_only_the_4d_layer_scales(name):
    spec = get_spec(name)
    state = timm.create_model(spec.timm_name).state_dict()
    mapped = spec.key_map(state)
    assert list(mapped) == list(state), "keys are not renamed"
    ours = spec.build()
    ours.load_state_dict(mapped, strict=True)
    reshaped = {k for k in state if mapped[k].shape != state[k].shape}
    scales_4d = {k for k, m in ours.named_modules() if isinstance(m, LayerScale2d)}
    assert reshaped == {f"{k}.gamma" for k in scales_4d}
    assert all(mapped[k].shape == (state[k].numel(), 1, 1) for k in reshaped)
    # our own state dict maps onto itself
    own = ours.state_dict()
    assert all(v.shape == own[k].shape for k, v in spec.key_map(own).items())


# --------------------------------------------------------------------------- blocks against timm's blocks


def test_offset_index_is_timms():
    assert torch.equal(relative_offset_index(7), Attention(dim=64).attention_bias_idxs)
    assert torch.equal(relative_offset_index(3), Attention(dim=64, resolution=3).attention_bias_idxs)


def test_attention_matches_timm_and_its_dense_bias_form(make_inputs, rel_l2):
    reference = _stressed(Attention(dim=64))
    ours = LearnedBiasAttention(64)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(3, 49, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        assert rel_l2(ours(x), expected) <= TOL
        merged = copy.deepcopy(ours)
        assert merged.reparameterize() == MergeCount(tables=1) and merged.reparameterize() == MergeCount()
        assert {n for n, _ in merged.named_parameters()} == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
        assert {n for n, _ in merged.named_buffers()} == {"attention_bias"}
        assert merged.attention_bias.shape == (8, 49, 49)
        assert rel_l2(merged(x), expected) <= TOL
        # the bias is not negligible: dropping it changes the output
        merged.attention_bias.zero_()
        assert rel_l2(merged(x), expected) > 1e-2


def test_attention_refuses_another_token_grid():
    with pytest.raises(ValueError, match="7x7 token grid") as raised:
        LearnedBiasAttention(64)(torch.zeros(1, 64, 64))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("fused", [False, True], ids=["bn-kept", "bn-fused"])
def test_pool_block_matches_timm_and_folds_its_mlp_scale(fused, make_inputs, rel_l2):
    reference = _stressed(MetaBlock2d(32))
    ours = efficientformer.PoolMetaBlock(32, 4.0, 1e-5)
    ours.load_state_dict(efficientformer.key_map(reference.state_dict()), strict=True)
    ours.eval()
    x = make_inputs(batch=2, size=9, channels=32)  # odd side: the pool's border divisors matter
    with torch.no_grad():
        expected = reference(x)
        assert rel_l2(ours(x), expected) <= TOL
        start = fuse_batchnorm(ours, x)[0] if fused else ours
        merged, count = reparameterize(start)
        assert count == MergeCount(layer_scales=1)
        assert isinstance(merged.ls2, nn.Identity) and isinstance(merged.ls1, LayerScale2d)
        assert rel_l2(merged(x), expected) <= TOL
        # then fusing what is left keeps it exact as well (reparameterize before fuse)
        assert rel_l2(fuse_batchnorm(merged, x)[0](x), expected) <= TOL


def test_attention_block_matches_timm_and_folds_both_scales(rel_l2):
    reference = _stressed(MetaBlock1d(64))
    ours = efficientformer.AttentionMetaBlock(64, 4.0, 1e-5, resolution=7)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(2, 49, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        assert rel_l2(ours(x), expected) <= TOL
        merged, count = reparameterize(ours)
        assert count == MergeCount(layer_scales=2, tables=1)
        assert not any(isinstance(m, TokenLayerScale) for m in merged.modules())
        assert rel_l2(merged(x), expected) <= TOL


# ------------------------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("name", [_case(n) for n in NAMES])
def test_deployed_model_matches_timm_with_random_bias_tables(name, make_inputs, rel_l2):
    spec = get_spec(name)
    reference = _stressed(timm.create_model(spec.timm_name), seed=1)
    ours = spec.build()
    ours.load_state_dict(spec.key_map(reference.state_dict()), strict=True)
    x = make_inputs(batch=2, size=SIDE, seed=4)
    fused, report = fuse_batchnorm(ours, x)
    assert report.skipped == {}, "the generic conv→BN pass folds every BatchNorm of this family"
    merged, count = reparameterize(fused)
    blocks = [
        m for m in ours.modules() if isinstance(m, efficientformer.PoolMetaBlock | efficientformer.AttentionMetaBlock)
    ]
    vit = sum(isinstance(m, efficientformer.AttentionMetaBlock) for m in blocks)
    assert vit == spec.config.num_vit
    assert count == MergeCount(layer_scales=len(blocks) + vit, tables=vit)
    with torch.no_grad():
        expected = reference(x)
        assert rel_l2(ours(x), expected) <= TOL
        assert rel_l2(merged(x), expected) <= TOL


def test_other_input_sizes_fail_with_one_line():
    spec = get_spec("efficientformer_l1")
    with pytest.raises(ValueError, match="takes 224x224 px inputs only") as raised:
        efficientformer.EfficientFormer(spec.config, input_size=256)
    assert "\n" not in str(raised.value) and "got 256x256" in str(raised.value)
    model = spec.build()
    for shape in [(1, 3, 256, 256), (1, 3, 224, 192), (1, 3, 64, 64)]:
        with pytest.raises(ValueError, match="takes 224x224 px inputs only") as raised:
            model(torch.zeros(shape))
        assert "\n" not in str(raised.value) and f"got {shape[2]}x{shape[3]}" in str(raised.value)
    merged, _ = reparameterize(model)
    with pytest.raises(ValueError, match="takes 224x224 px inputs only"):
        merged(torch.zeros(1, 3, 192, 192))


def test_config_rejects_a_vit_count_outside_the_last_stage():
    for num_vit in (0, 5):
        with pytest.raises(ValueError, match="num_vit"):
            efficientformer.EfficientFormerConfig(depths=(3, 2, 6, 4), widths=(48, 96, 224, 448), num_vit=num_vit)


# ----------------------------------------------------------------------------------------------- exports


def _constant_gathers(model: onnx.ModelProto) -> list[str]:
    """Gather nodes whose index is a constant (an initializer or a Constant node's output)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    gathers = ("Gather", "GatherND", "GatherElements")
    return [n.name for n in graph.node if n.op_type in gathers and n.input[1] in constants]


def _bias_gathers(traced: Traced) -> list[str]:
    """``aten.index`` calls of a captured program, named by the tensor they gather from."""
    nodes = traced.program.graph.nodes
    return [str(n.args[0]) for n in nodes if n.op == "call_function" and n.target is torch.ops.aten.index.Tensor]


def test_constant_gather_check_sees_a_gather_on_an_initializer():
    """Positive control for the ONNX check below (the exporter folds such a Gather itself, so build one)."""
    table = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "table")
    index = numpy_helper.from_array(np.array([[0, 3], [3, 0]], dtype=np.int64), "index")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "index"], ["bias"], axis=1),
            helper.make_node("Add", ["x", "bias"], ["y"]),
        ],
        "bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 2])],
        [table, index],
    )
    assert len(_constant_gathers(helper.make_model(graph))) == 1


def test_deployed_graph_gathers_nothing_from_the_bias_table(stressed_original, make_inputs):
    original = stressed_original("efficientformer_l1")
    example = make_inputs(batch=2, size=SIDE)
    merged, _ = reparameterize(fuse_batchnorm(original, example)[0])
    # the train-time capture gathers its one bias table through the constant index; the deployed one adds a constant
    assert [name.endswith("attention_biases") for name in _bias_gathers(trace(original, example))] == [True]
    traced = trace(merged, example)
    assert _bias_gathers(traced) == []
    deployed = export_onnx(traced, example)
    assert _constant_gathers(deployed) == []
    ops = [n.op_type for n in deployed.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Softmax") == 1


@pytest.mark.parametrize("precision", [Precision.FP16, Precision.FP32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("name", [_case(n) for n in NAMES])
def test_coreml_conversion(name, precision, stressed_original, make_inputs, tmp_path):
    example = make_inputs(batch=1, size=SIDE)
    merged, _ = reparameterize(fuse_batchnorm(stressed_original(name), example)[0])
    path = tmp_path / "m.mlpackage"
    details = export_coreml(merged, example, path, precision)
    assert path.is_dir() and any(path.rglob("*.mlmodel"))
    assert details.precision is precision and details.fallback_reason is None
