"""ONNX export: dynamic batch, checked by onnx's checker and full shape inference."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import onnx
import torch
from onnx.tools.update_model_dims import update_inputs_outputs_dims

from deployforge.options import DEFAULT_OPSET, Capture
from deployforge.trace import Traced

INPUT_NAME, OUTPUT_NAME = "image", "logits"
BATCH_DIM = "batch"


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
    if traced.capture is Capture.TORCH_EXPORT:
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
        dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
    )
    return onnx.load_from_string(buffer.getvalue())


def with_batch(model: onnx.ModelProto, batch: int | str) -> onnx.ModelProto:
    """Return a copy of ``model`` whose inputs and outputs have ``batch`` as dimension 0.

    Args:
        model: the graph.
        batch: a fixed size, or a name for a symbolic dimension.

    Returns:
        The copy; ``model`` is not modified.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in (*copy.graph.input, *copy.graph.output):
        value.type.tensor_type.shape.dim[0].Clear()  # update_inputs_outputs_dims refuses to change a set size

    def dims(values) -> dict[str, list[int | str]]:
        def rest(value) -> list[int | str]:
            shape = value.type.tensor_type.shape.dim[1:]
            return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape]

        return {v.name: [batch, *rest(v)] for v in values}

    return update_inputs_outputs_dims(copy, dims(copy.graph.input), dims(copy.graph.output))


def finalize(model: onnx.ModelProto, batch: int | None = None) -> onnx.ModelProto:
    """Set the batch dimension, clamp the IR version for onnxruntime, run the checker and shape inference.

    Args:
        model: the exported graph.
        batch: a fixed batch size, or ``None`` for a dynamic batch named ``batch``.

    Raises:
        onnx.checker.ValidationError / onnx.shape_inference.InferenceError: the graph is invalid.
    """
    model = with_batch(model, BATCH_DIM if batch is None else batch)
    model.ir_version = min(model.ir_version, max_runtime_ir_version())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def export_onnx(
    traced: Traced, example: torch.Tensor, opset: int = DEFAULT_OPSET, batch: int | None = None
) -> onnx.ModelProto:
    """Convert a captured graph to a checked ONNX model (in memory).

    Args:
        traced: the output of the trace stage.
        example: the input used to trace (needed by the ``torch.jit.trace`` fallback).
        opset: ONNX opset.
        batch: a fixed batch size, or ``None`` for a dynamic batch named ``batch``.

    Returns:
        The checked model with shapes inferred.
    """
    return finalize(_to_proto(traced, example, opset), batch)


def simplify(model: onnx.ModelProto, batch: int | None = None) -> tuple[onnx.ModelProto | None, str]:
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
    return finalize(simplified, batch), f"onnxsim: {before} -> {after} nodes"


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
