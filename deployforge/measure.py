"""Parameters and MACs counted from the exported ONNX graph, cross-checked against torch.

MACs are multiply-accumulates of Conv, Gemm and MatMul (attention included) at batch 1; elementwise
ops are not counted (docs/design.md, "Model zoo sizes"). onnx's shape inference supplies every shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx
from onnx import numpy_helper

from .targets.onnx import with_batch

if TYPE_CHECKING:  # torch loads where torch models are counted: verify reads SizeReport without it
    import torch
    from torch import nn


@dataclass(frozen=True)
class SizeReport:
    """Parameters and MACs of one export, and the reference figures they are gated against.

    Attributes:
        params_train: parameters of the train-time (multi-branch) model.
        params_reparameterized: parameters after reparameterizing alone (BatchNorm affines still counted).
        params_deployed_torch: parameters of the fused and reparameterized torch model.
        macs_torch: MACs per image of the deployed torch model (``torch.utils.flop_counter``).
        reference_params_m: the variant's reference parameter count, millions (``None`` outside the registry).
        reference_gmacs: the variant's reference MACs at its published input size, G (``None`` outside the registry).
        params_onnx: weights the deployed ONNX graph computes with (``None`` without an ONNX export).
        macs_onnx: MACs per image of the deployed ONNX graph.
        params_onnx_multibranch: weights of the multi-branch ONNX graph (``None`` when it was not written).
        macs_onnx_multibranch: MACs per image of the multi-branch ONNX graph.
        onnx_nodes: nodes in the deployed ONNX graph.
        onnx_batchnorm_nodes: BatchNormalization nodes left in the deployed ONNX graph.
    """

    params_train: int
    params_reparameterized: int
    params_deployed_torch: int
    macs_torch: int
    reference_params_m: float | None
    reference_gmacs: float | None
    params_onnx: int | None = None
    macs_onnx: int | None = None
    params_onnx_multibranch: int | None = None
    macs_onnx_multibranch: int | None = None
    onnx_nodes: int | None = None
    onnx_batchnorm_nodes: int | None = None

    def with_onnx(self, deployed: onnx.ModelProto, multi_branch: onnx.ModelProto | None) -> SizeReport:
        """A copy with the figures of the deployed and (when written) the multi-branch ONNX graphs filled in."""
        return dataclasses.replace(
            self,
            params_onnx=onnx_params(deployed),
            macs_onnx=onnx_macs(deployed),
            params_onnx_multibranch=onnx_params(multi_branch) if multi_branch is not None else None,
            macs_onnx_multibranch=onnx_macs(multi_branch) if multi_branch is not None else None,
            onnx_nodes=len(deployed.graph.node),
            onnx_batchnorm_nodes=sum(n.op_type == "BatchNormalization" for n in deployed.graph.node),
        )

    @property
    def params_deployed(self) -> int:
        """Parameters of what is deployed: the ONNX graph's count when there is one, else torch's."""
        return self.params_onnx if self.params_onnx is not None else self.params_deployed_torch

    @property
    def macs_deployed(self) -> int:
        """MACs per image of what is deployed: the ONNX graph's count when there is one, else torch's."""
        return self.macs_onnx if self.macs_onnx is not None else self.macs_torch


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def onnx_params(model: onnx.ModelProto) -> int:
    """Number of floating-point weights the graph computes with.

    Exporters may share one initializer between nodes that hold equal values; it is counted once per
    node that reads it. The exporter drops conv biases that are exactly zero, so a model with all-zero
    folded biases (identity BatchNorm statistics) holds fewer weights than its torch twin; the manifest
    reports both counts. Scalars (eps, attention scale) are not parameters and are skipped.
    """
    sizes = {
        init.name: math.prod(init.dims)
        for init in model.graph.initializer
        if numpy_helper.to_array(init).dtype.kind == "f" and math.prod(init.dims) > 1
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].HasField("t"):
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.dtype.kind == "f" and value.size > 1:
                sizes[node.output[0]] = value.size
    return int(sum(sizes[name] for node in model.graph.node for name in node.input if name in sizes))


def onnx_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv, Gemm and MatMul at batch 1.

    Raises:
        ValueError: a counted node's shape could not be inferred.
    """
    single = with_batch(model, 1)
    del single.graph.value_info[:]
    shapes = _shapes(onnx.shape_inference.infer_shapes(single, data_prop=True))
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        weight = shapes.get(node.input[1])
        if not out or not weight or min(out) < 0 or min(weight) < 0:
            raise ValueError(f"shape of {node.op_type} node {node.name!r} is unknown; cannot count its MACs")
        if node.op_type == "Conv":
            total += math.prod(out) * math.prod(weight[1:])  # (C_in / groups) · kernel area per output
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            total += math.prod(out) * (weight[1] if trans_b else weight[0])
        else:
            a_shape = shapes.get(node.input[0])
            total += math.prod(out) * a_shape[-1]
    return int(total)


def torch_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates per image from ``torch.utils.flop_counter`` (FLOPs / 2) on ``example``'s shape.

    The eval-mode forward runs on a weightless (meta-device) copy of ``model`` with a meta input: the
    counter's formulas read only shapes, so the count is the one a real forward gives (tests/test_sizes.py
    checks it against the ONNX graph's count) and nothing is computed. ``model`` is not modified.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .reparam import weightless_copy

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        weightless_copy(model).eval()(example.to("meta"))
    return int(counter.get_total_flops() // 2 // example.shape[0])


def torch_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))
