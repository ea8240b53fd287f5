"""ONNX export: opset 18, dynamic batch, checked by onnx's checker and full shape inference."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import onnx
import torch

from deployforge.trace import Traced

INPUT_NAME, OUTPUT_NAME = "image", "logits"
DEFAULT_OPSET = 18


@functools.lru_cache(maxsize=1)
def max_runtime_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime loads (probed once with a one-node model)."""
    import onnxruntime as ort

    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "probe", [value("x", onnx.TensorProto.FLOAT, [1])], [value("y", onnx.TensorProto.FLOAT, [1])]
    )
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    for version in range(onnx.IR_VERSION, 6, -1):
        probe.ir_version = version
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            return version
        except Exception:  # noqa: BLE001, S112 - an unsupported IR version is exactly what we probe for
            continue
    return 7


def _to_proto(traced: Traced, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    if traced.path == "torch.export":
        program = torch.onnx.export(
            traced.program,
            (),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(
        traced.program,
        (example,),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    return onnx.load_from_string(buffer.getvalue())


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name the batch dimension, clamp the IR version for onnxruntime, run the checker and shape inference.

    Raises:
        onnx.checker.ValidationError / onnx.shape_inference.InferenceError: the graph is invalid.
    """
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.dim_param = "batch"
    model.ir_version = min(model.ir_version, max_runtime_ir_version())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def export_onnx(traced: Traced, example: torch.Tensor, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a captured graph to a checked ONNX model (in memory).

    Args:
        traced: the output of the trace stage.
        example: the input used to trace (needed by the ``torch.jit.trace`` fallback).
        opset: ONNX opset.

    Returns:
        The checked model with shapes inferred, batch dimension named ``batch``.
    """
    return finalize(_to_proto(traced, example, opset))


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    """Try onnxsim on ``model``; return the simplified model (or ``None``) and what happened.

    The caller keeps the result only if it has fewer nodes and its parity is re-verified.
    """
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
    except Exception as error:  # noqa: BLE001 - onnxsim is optional; report why it was not used
        return None, f"onnxsim failed: {type(error).__name__}"
    if not ok:
        return None, "onnxsim could not validate its output"
    before, after = len(model.graph.node), len(simplified.graph.node)
    if after >= before:
        return None, f"onnxsim removed no nodes ({before})"
    return finalize(simplified), f"onnxsim: {before} -> {after} nodes"


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Serialize ``model`` to ``path`` (single file; models here are far below the 2 GB protobuf limit)."""
    Path(path).write_bytes(model.SerializeToString())


def run_onnx(source: Path | bytes, inputs, threads: int = 1):
    """Run an ONNX model with onnxruntime on the CPU and return the first output as a numpy array."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(source) if isinstance(source, Path) else source, options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs})[0]
