"""LiteRT (formerly TensorFlow Lite): a ``.tflite`` flatbuffer, converted by litert-torch, run by ai-edge-litert.

litert-torch lowers the ``torch.export`` program through MLIR to TFLite builtin operators, FP32 throughout
(no quantization is asked for). It moves the convolutions to LiteRT's NHWC layout inside the graph and keeps the
signature torch's: the file takes ``(B, 3, H, W)`` float32 and gives ``(B, classes)`` float32, with a
``TRANSPOSE`` after the input (and where the graph leaves the image layout). The interpreter applies its default
XNNPACK delegate to the CPU graph; :meth:`LiteRTTarget.describe` says how many operators it takes. The
``split-dw7x7`` rewrite (:mod:`deployforge.targets.rewrites`) keeps 7×7 depthwise convolutions off XNNPACK's slow
path here as under ExecuTorch.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .protocol import ArtifactDescription, MissingExtra, Runner, TargetOptions
from .rewrites import SPLIT_DW7X7, apply_rewrites

if TYPE_CHECKING:
    import torch
    from torch import nn

CONVERTER = "litert-torch"
SHOW_PROGRESS = "LITERT_TORCH_SHOW_PROGRESS"  # litert_torch's switch for its per-step console log


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Turn off litert-torch's progress log (printed to stdout) for the duration, then restore the setting."""
    before = os.environ.get(SHOW_PROGRESS)
    os.environ[SHOW_PROGRESS] = "n"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SHOW_PROGRESS, None)
        else:
            os.environ[SHOW_PROGRESS] = before


def _operator_name(model, index: int) -> str:
    """The name of operator code ``index`` of a ``ModelT``: the builtin's name, or a custom op's own name."""
    from ai_edge_litert.tools import flatbuffer_utils

    code = model.operatorCodes[index]
    name = flatbuffer_utils.opcode_to_name(model, index) or f"builtin {index}"
    if name == "CUSTOM" and code.customCode:
        return f"CUSTOM {code.customCode.decode(errors='replace')}"
    return name


def _metadata(model, key: str) -> str | None:
    """A string entry of the flatbuffer's metadata (``min_runtime_version``), or ``None``."""
    for entry in model.metadata or []:
        if entry.name.decode() == key:
            data = model.buffers[entry.buffer].data
            return None if data is None else bytes(data).rstrip(b"\0").decode(errors="replace")
    return None


def delegated_operators(path: Path) -> tuple[int, int]:
    """How many of the file's operators the interpreter's default XNNPACK delegate takes, and of how many.

    With delegate node fusion off, the interpreter gives each operator the delegate accepts a ``DELEGATE`` node
    of its own (added to the node list, after the file's operators), so counting those nodes counts the delegated
    operators exactly. ``_get_ops_details`` (private) is the only listing of the nodes the Python API offers.

    Returns:
        ``(delegated, total)`` operator counts.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1, experimental_disable_delegate_node_fusion=True)
    interpreter.allocate_tensors()
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    delegated = names.count("DELEGATE")
    return delegated, len(names) - delegated  # the file's operators: every node that is not a delegate's


class LiteRTTarget:
    """A ``.tflite`` flatbuffer (FP32), converted by litert-torch and run by ai-edge-litert's interpreter."""

    name = "litert"
    runtime = "litert"
    package = "ai-edge-litert"
    extra = "litert"
    rewrites: tuple[str, ...] = (SPLIT_DW7X7,)

    def files(self, model: str) -> tuple[str, ...]:
        """``MODEL.tflite``."""
        return (f"{model}.tflite",)

    def require(self) -> None:
        """Check that the converter (litert-torch) and the runtime (ai-edge-litert) import.

        Raises:
            MissingExtra: one of them does not.
        """
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError as error:
            raise MissingExtra(self.name, "ai-edge-litert", self.extra) from error
        try:
            import litert_torch  # noqa: F401
        except ImportError as error:
            raise MissingExtra(self.name, CONVERTER, self.extra) from error

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Convert ``model`` with litert-torch at ``example``'s shape (FP32) and write ``MODEL.tflite``.

        Raises:
            ValueError: the file's signature is not torch's (one float32 input of ``example``'s shape, one
                float32 ``(batch, classes)`` output).
        """
        import litert_torch

        model, rewritten = apply_rewrites(model, options.rewrites)
        path = directory / self.files(name)[0]
        with _quiet_converter():
            converted = litert_torch.convert(model.eval(), (example.float().contiguous(),))
            converted.export(str(path))
        description = self.describe(path)
        ((input_shape,),) = [description.inputs.values()]
        ((output_shape,),) = [description.outputs.values()]
        dtypes = (description.facts["input dtype"], description.facts["output dtype"])
        if input_shape != tuple(example.shape) or len(output_shape) != 2 or dtypes != ("float32", "float32"):
            raise ValueError(
                f"litert-torch wrote a {dtypes[0]} input {input_shape} and a {dtypes[1]} output {output_shape}; "
                f"expected float32 {tuple(example.shape)} in and float32 (batch, classes) out"
            )
        return {
            "converter": f"{CONVERTER} {litert_torch.__version__}",
            "operators": description.facts["operators"],
            "xnnpack delegate": description.facts["xnnpack delegate"],
            **rewritten,
            "weights": description.facts["constant tensors"],
        }

    def load(self, path: Path, threads: int = 1) -> Runner:
        """The interpreter on the file, ``threads`` threads, its default XNNPACK delegate applied."""
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        (source,) = interpreter.get_input_details()
        (sink,) = interpreter.get_output_details()

        def run(inputs: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(source["index"], np.ascontiguousarray(inputs, dtype=np.float32))
            interpreter.invoke()
            return interpreter.get_tensor(sink["index"])  # a copy: the next invoke does not overwrite it

        return run

    def describe(self, path: Path) -> ArtifactDescription:
        """Signature, operator histogram and constants from the flatbuffer; XNNPACK coverage from the interpreter."""
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model(str(path))
        (graph,) = model.subgraphs  # a classifier converts to one subgraph (control flow would add more)

        def signature(indices) -> dict[str, tuple[int | str, ...]]:
            return {graph.tensors[i].name.decode(): tuple(int(d) for d in graph.tensors[i].shape) for i in indices}

        def dtype(index: int) -> str:
            return flatbuffer_utils.type_to_name(graph.tensors[index].type).lower()

        constants = Counter(
            dtype(i)
            for i, tensor in enumerate(graph.tensors)
            if tensor.buffer and model.buffers[tensor.buffer].data is not None
        )
        ops = Counter(_operator_name(model, op.opcodeIndex) for op in graph.operators)
        delegated, total = delegated_operators(path)
        facts = {
            "input dtype": ", ".join(dtype(i) for i in graph.inputs),
            "output dtype": ", ".join(dtype(i) for i in graph.outputs),
            "operators": str(len(graph.operators)),
            "xnnpack delegate": f"{delegated} of {total} ops",
            "constant tensors": ", ".join(f"{count} {kind}" for kind, count in constants.most_common()),
            "schema version": str(model.version),
        }
        runtime_version = _metadata(model, "min_runtime_version")
        if runtime_version:
            facts["min runtime version"] = runtime_version
        return ArtifactDescription(
            inputs=signature(graph.inputs),
            outputs=signature(graph.outputs),
            ops=dict(ops),
            size_bytes=path.stat().st_size,
            facts=facts,
        )


TARGET = LiteRTTarget()
