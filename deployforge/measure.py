"""Parameters and MACs counted from the exported ONNX graph, cross-checked against torch.

MACs are multiply-accumulates of Conv, Gemm and MatMul (attention included) at batch 1; elementwise
ops are not counted (DESIGN section 3). onnx's shape inference supplies every tensor shape.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    del fixed.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(fixed, data_prop=True)


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
    shapes = _shapes(_with_batch(model, 1))
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
    """Multiply-accumulates per image from ``torch.utils.flop_counter`` (FLOPs / 2) on ``example``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    was_training = model.training
    with counter, torch.no_grad():
        model.eval()(example)
    model.train(was_training)
    return int(counter.get_total_flops() // 2 // example.shape[0])


def torch_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def relative_gap(a: float, b: float) -> float:
    """``|a − b| / b``."""
    return float(abs(a - b) / b) if b else float(np.inf)
