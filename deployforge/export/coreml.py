"""Core ML export: an ML program (mlpackage), FP16 by default, deployment target iOS 16+.

coremltools converts on Linux but predicts only on macOS, so numerics of the package are checked in a
later issue; here the package's spec is validated (inputs, outputs, shapes, precision).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .onnx import INPUT_NAME, OUTPUT_NAME

PRECISIONS = ("fp16", "fp32")


def _capture(model: nn.Module, example: torch.Tensor) -> tuple[object, str]:
    try:
        program = torch.export.export(model.eval(), (example,))
        return program.run_decompositions({}), "torch.export"
    except Exception:  # noqa: BLE001 - documented fallback: TorchScript trace converts most CNNs
        with torch.no_grad():
            return torch.jit.trace(model.eval(), example, check_trace=False), "torch.jit.trace"


def export_coreml(model: nn.Module, example: torch.Tensor, path: Path, precision: str = "fp16") -> dict:
    """Convert ``model`` (fixed input shape of ``example``) to an ``.mlpackage`` at ``path``.

    Args:
        model: the reparameterized eval-mode model.
        example: an input of the exact shape the package accepts.
        path: destination ``.mlpackage`` directory (the caller stages it).
        precision: ``fp16`` or ``fp32`` compute precision; inputs and outputs stay float32.

    Returns:
        What was done: capture path, precision, deployment target, input/output shapes.
    """
    import coremltools as ct

    program, capture = _capture(model, example)
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    mlmodel = ct.convert(
        program,
        inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)],
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=compute,
    )
    mlmodel.save(str(path))
    return {"capture": capture, "precision": precision, "target": "iOS16", "input_shape": list(example.shape)}


def describe_package(path: Path) -> dict:
    """Read an ``.mlpackage``'s spec (no prediction) and return its inputs, outputs and spec version.

    Raises:
        Exception: the package is unreadable.
    """
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))

    def arrays(features) -> dict:
        return {f.name: list(f.type.multiArrayType.shape) for f in features}

    return {
        "inputs": arrays(spec.description.input),
        "outputs": arrays(spec.description.output),
        "spec_version": spec.specificationVersion,
        "kind": spec.WhichOneof("Type"),
    }
