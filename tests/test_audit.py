"""Runtime graph audit: what onnxruntime fuses in our exports, against timm's own export of the same weights.

docs/design.md, "Runtime graph audit". The unit tests build tiny graphs with onnx.helper; the per-model tests
export every registered model at 64 px and read onnxruntime's optimized graph.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import TensorProto, helper, numpy_helper
from pydantic import TypeAdapter

from deployforge.audit import GraphAudit, audit_graph, audit_onnx
from deployforge.fuse import fuse_batchnorm
from deployforge.parity import TOLERANCES, compare
from deployforge.peers import export_timm_reparameterized
from deployforge.registry import get_spec, list_models
from deployforge.reparam import reparameterize
from deployforge.stress import stress_weights
from deployforge.targets.onnx import export_onnx, run_onnx
from deployforge.trace import trace

SIZE, BATCH = 64, 2
BIG_PARAMS_M = 20.0
SHAPE = [1, 8, 4, 4]

# ------------------------------------------------------------------------------------ hand-built graphs


def _model(nodes: list[onnx.NodeProto], constants: dict[str, float | np.ndarray], opset: int = 18) -> bytes:
    """A one-input, one-output float graph; float constants become float32 initializers."""
    initializers = [
        numpy_helper.from_array(v if isinstance(v, np.ndarray) else np.array(v, dtype=np.float32), name)
        for name, v in constants.items()
    ]
    graph = helper.make_graph(
        nodes,
        "unit",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


GELU_CONSTANTS = {"sqrt2": math.sqrt(2.0), "one": 1.0, "half": 0.5}


def _gelu_dynamo() -> bytes:
    """torch_lib's exact GELU: ``x·(0.5·(1 + erf(x/√2)))``."""
    return _model(
        [
            helper.make_node("Div", ["x", "sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["half", "a"], ["h"]),
            helper.make_node("Mul", ["x", "h"], ["y"]),
        ],
        GELU_CONSTANTS,
    )


def _gelu_fusable() -> bytes:
    """What deployforge writes below opset 20: ``(0.5·x)·(1 + erf(x/√2))``."""
    return _model(
        [
            helper.make_node("Mul", ["x", "half"], ["h"]),
            helper.make_node("Div", ["x", "sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["h", "a"], ["y"]),
        ],
        GELU_CONSTANTS,
    )


def _silu() -> bytes:
    return _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], {})


def _axes(*axes: int) -> np.ndarray:
    return np.array(axes, dtype=np.int64)


def _se_gate() -> bytes:
    """Squeeze-excite: ``x·sigmoid(f(x))``, the gate computed from a pooled ``x``."""
    return _model(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
            helper.make_node("Sigmoid", ["m"], ["s"]),
            helper.make_node("Mul", ["x", "s"], ["y"]),
        ],
        {"axes": _axes(2, 3)},
    )


def _layer_norm_chain(affine: bool = False) -> bytes:
    """LayerNorm over the last axis written out: ``(x − μ) / √(mean((x − μ)²) + ε)`` (``· γ + β``)."""
    last = "y" if not affine else "n"
    scale = [helper.make_node("Mul", ["n", "gamma"], ["s"]), helper.make_node("Add", ["s", "beta"], ["y"])]
    gamma_beta = {"gamma": np.full(SHAPE[-1], 1.1, np.float32), "beta": np.full(SHAPE[-1], 0.1, np.float32)}
    return _model(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["mu"], keepdims=1),
            helper.make_node("Sub", ["x", "mu"], ["c"]),
            helper.make_node("Pow", ["c", "two"], ["sq"]),
            helper.make_node("ReduceMean", ["sq", "axes"], ["var"], keepdims=1),
            helper.make_node("Add", ["var", "eps"], ["v"]),
            helper.make_node("Sqrt", ["v"], ["sd"]),
            helper.make_node("Div", ["c", "sd"], [last]),
            *(scale if affine else []),
        ],
        {"axes": _axes(-1), "two": 2.0, "eps": 1e-5, **(gamma_beta if affine else {})},
    )


def test_a_gelu_in_the_dynamo_form_is_reported_unfused():
    audit = audit_onnx(_gelu_dynamo())
    assert audit.erf == 1 and not audit.fused
    assert audit.warnings() == ["1 Erf nodes left unfused by onnxruntime (GELU in a form its fusion does not match)"]


def test_a_gelu_in_the_fusable_form_becomes_one_kernel():
    audit = audit_onnx(_gelu_fusable())
    assert audit.erf == 0 and audit.warnings() == []
    assert audit.fused == {"com.microsoft.Gelu": 1} and audit.ops == {"com.microsoft.Gelu": 1}


def test_silu_is_detected_but_a_squeeze_excite_gate_is_not():
    assert audit_graph(onnx.load_from_string(_silu())).sigmoid_mul == 1
    se = _se_gate()
    assert audit_graph(onnx.load_from_string(se)).sigmoid_mul == 0
    assert audit_onnx(se).sigmoid_mul == 0


def test_onnxruntime_fuses_silu_on_the_cpu():
    audit = audit_onnx(_silu())
    assert audit.sigmoid_mul == 0 and audit.fused == {"com.microsoft.QuickGelu": 1}


def test_a_layer_norm_chain_is_detected():
    audit = audit_graph(onnx.load_from_string(_layer_norm_chain()))
    assert audit.norm_chain == 2  # the Pow of the variance and the Sqrt of the deviation
    assert audit.warnings() == [
        "2 Pow/Sqrt nodes of normalization chains left unfused by onnxruntime (a norm written as ReduceMean arithmetic)"
    ]
    # onnxruntime's LayerNormFusion needs the affine; with it, the chain becomes one LayerNormalization
    assert audit_onnx(_layer_norm_chain()).norm_chain == 2
    fused = audit_onnx(_layer_norm_chain(affine=True))
    assert fused.norm_chain == 0 and fused.ops == {"LayerNormalization": 1}
    # a Sqrt of anything but a ReduceMean chain (an attention scale from a shape) is no norm chain
    shape_sqrt = _model([helper.make_node("Sqrt", ["x"], ["y"])], {})
    assert audit_graph(onnx.load_from_string(shape_sqrt)).norm_chain == 0


def test_the_audit_round_trips_through_pydantic_and_counts_layout_reorders():
    audit = GraphAudit(
        nodes=3,
        ops={"Conv": 1, "com.microsoft.nchwc.ReorderInput": 1, "com.microsoft.nchwc.ReorderOutput": 1},
        fused={},
        reorders=2,
    )
    adapter = TypeAdapter(GraphAudit)
    assert adapter.validate_python(adapter.dump_python(audit)) == audit
    assert adapter.validate_json(adapter.dump_json(audit)) == audit
    assert audit.warnings() == []


def test_the_audit_imports_no_torch():
    code = "import sys, deployforge.audit; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------------------------- every registered model


def _case(name: str):
    big = get_spec(name).reference.params_m > BIG_PARAMS_M
    return pytest.param(name, marks=pytest.mark.slow) if big else name


def _inputs(size: int = SIZE) -> torch.Tensor:
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))


def _side(name: str) -> int:
    spec = get_spec(name)
    return spec.input_size if spec.fixed_input_size else SIZE


def _timm_and_ours(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's model with seeded stressed weights, and ours holding the very same state dict."""
    spec = get_spec(name)
    torch.manual_seed(0)
    peer = stress_weights(timm.create_model(spec.timm_name), seed=0).eval()
    state = peer.state_dict()
    ours = spec.build()
    ours.load_state_dict(spec.key_map(state) if spec.key_map is not None else state, strict=True)
    return peer, ours.eval()


def _deployed(model: torch.nn.Module, x: torch.Tensor):
    fused, _ = fuse_batchnorm(model, x)
    merged, _ = reparameterize(fused)
    return trace(merged, x)


def _onnx_parity(model: bytes, original: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        reference = original(x).numpy()
    return compare(run_onnx(model, x.numpy()), reference, TOLERANCES.onnx)


@pytest.mark.parametrize("name", [_case(s.name) for s in list_models()])
def test_runtime_fuses_every_activation_and_norm(name, tmp_path):
    """No activation or norm chain is left unfused; layout reorders at most the peer's.

    The peer is timm's own export of the same weights; a family timm does not ship is held to its own
    multi-branch original (the graph a user would get without deployforge).
    """
    x = _inputs(_side(name))
    if get_spec(name).timm_name is not None:
        peer_model, ours = _timm_and_ours(name)
        peer_onnx = export_timm_reparameterized(peer_model, x.shape[-1], tmp_path / f"{name}.timm.onnx", opset=18)
    else:
        torch.manual_seed(0)
        ours = stress_weights(get_spec(name).build(), seed=0).eval()
        peer_onnx = export_onnx(trace(ours, x), x).SerializeToString()
    model = export_onnx(_deployed(ours, x), x).SerializeToString()
    audit = audit_onnx(model)
    peer = audit_onnx(peer_onnx)

    assert audit.erf == 0, audit.warnings()
    assert audit.sigmoid_mul == 0, audit.warnings()  # onnxruntime makes x·sigmoid(x) one QuickGelu on the CPU
    assert audit.norm_chain == 0, audit.warnings()
    assert audit.warnings() == []
    assert audit.reorders <= peer.reorders, (audit.ops, peer.ops)
    assert not any(n.domain.startswith("com.microsoft") for n in onnx.load_from_string(model).graph.node)
    parity = _onnx_parity(model, ours, x)
    assert parity.ok, parity.rel_l2


GELU_MODEL = "fastvit_t8"


@pytest.fixture(scope="module")
def gelu_model():
    _, ours = _timm_and_ours(GELU_MODEL)
    x = _inputs()
    return ours, _deployed(ours, x), x


@pytest.mark.parametrize("opset", [17, 18, 20, 23])
def test_every_gelu_is_fused_at_every_opset(opset, gelu_model):
    ours, traced, x = gelu_model
    model = export_onnx(traced, x, opset=opset)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    audit = audit_onnx(model.SerializeToString())
    assert audit.erf == 0, audit.warnings()
    gelus = 17  # every GELU of fastvit_t8, each one kernel
    assert audit.ops.get("com.microsoft.Gelu" if opset < 20 else "Gelu") == gelus, audit.ops
    parity = _onnx_parity(model.SerializeToString(), ours, x)
    assert parity.ok, parity.rel_l2


@pytest.mark.parametrize("opset", [17, 23])
def test_group_norm_stays_one_kernel_at_every_opset(opset):
    """GroupNormalization-21 has no onnxruntime CPU kernel: its function body would run as ~10 ops per norm."""
    _, ours = _timm_and_ours("mobilevitv2_050")
    x = _inputs()
    model = export_onnx(_deployed(ours, x), x, opset=opset)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    audit = audit_onnx(model.SerializeToString())
    assert audit.norm_chain == 0 and audit.ops.get("InstanceNormalization") == 21, audit.ops  # all 21 GroupNorms
    assert _onnx_parity(model.SerializeToString(), ours, x).ok
