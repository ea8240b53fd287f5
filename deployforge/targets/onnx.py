"""ONNX export: dynamic batch, checked by onnx's checker and full shape inference.

The torch.export path writes activations and norms in the forms onnxruntime's graph fusions match
(docs/design.md, "Runtime graph audit"): an exact GELU below opset 20 as the chain its GELU fusion turns into
one kernel, GroupNorm from opset 21 as InstanceNormalization (onnxruntime has no CPU kernel for
GroupNormalization-21 and runs its function body, some twenty primitive ops per norm). Everything stays standard
ONNX; opset 17 is written at 18 and rewritten (torch's exporter writes 18 and up).
"""

from __future__ import annotations

import collections
import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx.tools.update_model_dims import update_inputs_outputs_dims

from deployforge.options import DEFAULT_OPSET, Capture

from .protocol import ArtifactDescription, Runner, TargetOptions

if TYPE_CHECKING:  # torch loads where a graph is exported; running or inspecting an ONNX file needs no torch
    import torch
    from torch import nn

    from deployforge.trace import Traced

INPUT_NAME, OUTPUT_NAME = "image", "logits"
BATCH_DIM = "batch"

TORCHLIB_OPSET = 18  # the lowest opset torch's dynamo exporter writes; lower ones are converted from it
GELU_OPSET = 20  # the native Gelu op
GROUP_NORM_OPSET = 21  # GroupNormalization (what torch writes from here on)
SQRT_2, SQRT_2_OVER_PI = 1.4142135623730951, 0.7978845608028654


def _gelu_fusable(self, approximate: str = "none"):
    """``aten.gelu`` below opset 20, as ``(0.5·x)·(1 + erf(x/√2))``.

    This is pattern 1 of onnxruntime's GeluFusion (``Div(√2) → Erf → Add(1)``, times ``Mul(x, 0.5)``), fused
    into one ``Gelu`` kernel. torch_lib's ``x·(0.5·(1 + erf(x/√2)))`` matches no pattern; TorchScript's
    ``(x·(1 + erf(x/√2)))·0.5`` (pattern 2) is missed when ``x`` is itself a ``Mul`` output (an SE gate).
    The tanh approximation gets the form of onnxruntime's FastGeluFusion (none of the zoo uses it).
    """
    from onnxscript import opset18 as op

    half = op.Mul(self, _scalar(0.5, self))
    if approximate == "tanh":  # FastGeluFusion: Pow(x, 3) → Mul(0.044715) → Add(x) → Mul(√(2/π)) → Tanh → Add(1)
        cubic = op.Add(op.Mul(op.Pow(self, _scalar(3.0, self)), _scalar(0.044715, self)), self)
        return op.Mul(half, op.Add(op.Tanh(op.Mul(cubic, _scalar(SQRT_2_OVER_PI, self))), _scalar(1.0, self)))
    return op.Mul(half, op.Add(op.Erf(op.Div(self, _scalar(SQRT_2, self))), _scalar(1.0, self)))


def _group_norm_instance(
    input, num_groups: int, weight=None, bias=None, eps: float = 1e-05, cudnn_enabled: bool = True
):
    """``aten.group_norm`` from opset 21 on, as InstanceNormalization over ``(N, groups, -1)`` and an affine.

    The form torch's exporter writes below opset 21 (and TorchScript's at every opset); onnxruntime runs it
    with its InstanceNormalization kernel.
    """
    import onnx_ir as ir
    from onnxscript import opset18 as op

    del cudnn_enabled
    dtype = input.dtype
    grouped = op.Reshape(input, op.Constant(value_ints=[0, num_groups, -1]))
    ones = ir.tensor([1.0] * num_groups, dtype=dtype)
    zeros = ir.tensor([0.0] * num_groups, dtype=dtype)
    norm = op.Reshape(op.InstanceNormalization(grouped, ones, zeros, epsilon=eps), op.Shape(input))
    axes = op.Constant(value_ints=list(range(1, len(input.shape) - 1)))  # (C,) -> (C, 1, ..., 1)
    if weight is not None:
        norm = op.Mul(norm, op.Unsqueeze(weight, axes))
    if bias is not None:
        norm = op.Add(norm, op.Unsqueeze(bias, axes))
    return norm


def _scalar(value: float, like):
    import onnx_ir as ir

    return ir.tensor(value, dtype=like.dtype)


def runtime_translations(opset: int) -> dict[Callable, Callable]:
    """The ``custom_translation_table`` of the dynamo exporter at ``opset`` (docs/design.md, "Runtime graph audit").

    Args:
        opset: the opset torch writes (18 or above).

    Returns:
        aten op -> onnxscript function, only for ops whose default form onnxruntime does not fully optimize.
    """
    import torch

    table = {}
    if opset < GELU_OPSET:
        table[torch.ops.aten.gelu.default] = _gelu_fusable
    if opset >= GROUP_NORM_OPSET:
        table[torch.ops.aten.group_norm.default] = _group_norm_instance
    return table


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


def _convert_down(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Rewrite an opset-18 export as opset 17 (the only opset below the exporter's).

    torch's own down-conversion hands onnx's converter a model without its initializers: it fails on the
    ``axes`` input of ``ReduceMean`` and silently keeps opset 18. onnx's converter, given the whole model,
    has no adapter for ``Split``. The few ops that changed at 18 are rewritten here: a reduction's constant
    ``axes`` input becomes the attribute, ``Split``'s ``num_outputs`` becomes the sizes of its outputs.

    Raises:
        InvalidSetting: an op that changed at opset 18 in a way opset 17 cannot express here.
    """
    from onnx import numpy_helper

    from deployforge.errors import InvalidSetting

    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.output)
    }
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    converted = onnx.ModelProto()
    converted.CopyFrom(model)

    def refuse(node: onnx.NodeProto) -> InvalidSetting:
        return InvalidSetting(
            "opset", f"{node.op_type} ({node.name}) cannot be written at ONNX opset {opset}; export at opset 18"
        )

    def since(op_type: str, version: int) -> int | None:
        try:
            return onnx.defs.get_schema(op_type, version).since_version
        except onnx.defs.SchemaError:
            return None

    for node in converted.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if since(node.op_type, opset) == since(node.op_type, TORCHLIB_OPSET):
            continue
        attributes = {a.name: a for a in node.attribute}
        if node.op_type.startswith("Reduce"):  # axes: input -> attribute
            if "noop_with_empty_axes" in attributes and attributes["noop_with_empty_axes"].i:
                raise refuse(node)
            if len(node.input) > 1 and node.input[1]:
                if node.input[1] not in constants:
                    raise refuse(node)
                axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
                del node.input[1:]
                node.attribute.append(onnx.helper.make_attribute("axes", axes))
        elif node.op_type == "Split":  # num_outputs -> the output sizes
            if len(node.input) < 2 or not node.input[1]:
                axis = attributes["axis"].i if "axis" in attributes else 0
                shapes = [dims.get(out) or [] for out in node.output]
                sizes = [shape[axis] if -len(shape) <= axis < len(shape) else None for shape in shapes]
                if any(not size for size in sizes):
                    raise refuse(node)
                name = f"{node.name or node.output[0]}_split_sizes"
                converted.graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
                node.input.append(name)
        else:
            raise refuse(node)
        kept = [a for a in node.attribute if a.name not in ("noop_with_empty_axes", "num_outputs")]
        del node.attribute[:]
        node.attribute.extend(kept)
    for entry in converted.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    return converted


def _to_proto(traced: Traced, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    import torch

    if traced.capture is Capture.TORCH_EXPORT:
        written = max(opset, TORCHLIB_OPSET)
        program = torch.onnx.export(
            traced.program,
            (),
            dynamo=True,
            opset_version=written,
            custom_translation_table=runtime_translations(written),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
        proto = program.model_proto
        return _convert_down(proto, opset) if opset < written else proto
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

    A ``torch.export`` program is written with :func:`runtime_translations` (the activation and norm forms
    onnxruntime fuses) at ``max(opset, 18)``, then rewritten down to ``opset`` 17 if asked.

    Args:
        traced: the output of the trace stage.
        example: the input used to trace (needed by the ``torch.jit.trace`` fallback).
        opset: ONNX opset.
        batch: a fixed batch size, or ``None`` for a dynamic batch named ``batch``.

    Returns:
        The checked model with shapes inferred.

    Raises:
        InvalidSetting: opset 17 asked for a graph with an op opset 17 cannot express.
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


def session_runner(path: Path, threads: int = 1, ort_format: bool = False) -> Runner:
    """An onnxruntime CPU session on ``path`` (``.onnx``, or ``.ort`` with ``ort_format``), as a numpy runner."""
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    # idle threads sleep instead of spinning: runtimes timed in turn each get the cores (deployforge.runtime_bench)
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if ort_format:
        session_options.add_session_config_entry("session.load_model_format", "ORT")
    session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda inputs: session.run(None, {input_name: inputs})[0]


class OnnxTarget:
    """The deployed ONNX graph (dynamic batch), run by onnxruntime on the CPU.

    The pipeline adds what only ONNX has (onnxsim, the runtime graph audit, the multi-branch baseline) around
    :meth:`export`'s conversion; ``verify`` and ``bench`` use :meth:`load` and :meth:`describe` as for any target.
    """

    name = "onnx"
    runtime = "onnxruntime"
    package = "onnxruntime"
    extra = None
    rewrites: tuple[str, ...] = ()

    def files(self, model: str) -> tuple[str, ...]:
        """``MODEL.onnx``."""
        return (f"{model}.onnx",)

    def require(self) -> None:
        """Onnx and onnxruntime are core dependencies: nothing to check."""

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Trace ``model``, convert it at ``options.opset`` with a dynamic batch, simplify it, write it."""
        from deployforge.trace import trace

        graph = export_onnx(trace(model, example), example, options.opset)
        simplified, note = simplify(graph)
        save_onnx(simplified if simplified is not None else graph, directory / self.files(name)[0])
        return {"opset": str(options.opset), "simplify": note}

    def load(self, path: Path, threads: int = 1) -> Runner:
        """An onnxruntime CPU session on the file (default graph optimizations), ``threads`` intra-op threads."""
        return session_runner(path, threads)

    def describe(self, path: Path) -> ArtifactDescription:
        """Inputs, outputs (symbolic dimensions by name) and the node histogram of the graph file."""
        model = onnx.load(str(path))

        def shapes(values) -> dict[str, tuple[int | str, ...]]:
            dims = lambda v: tuple(d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim)  # noqa: E731
            return {v.name: dims(v) for v in values}

        return ArtifactDescription(
            inputs=shapes(model.graph.input),
            outputs=shapes(model.graph.output),
            ops=dict(collections.Counter(node.op_type for node in model.graph.node)),
            size_bytes=Path(path).stat().st_size,
            facts={"opset": str(model.opset_import[0].version)},
        )


TARGET = OnnxTarget()
