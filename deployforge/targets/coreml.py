"""Core ML export: an ML program (mlpackage), FP16 by default, deployment target iOS 16+.

coremltools converts on Linux but predicts only on macOS, so here the package's spec is validated (inputs,
outputs, shapes, model type); its numbers are not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deployforge.options import Capture, Precision
from deployforge.report import CoreMLDetails, PackageSpec

if TYPE_CHECKING:  # torch loads where a package is converted; describing one needs no torch
    import torch
    from torch import nn

from .onnx import INPUT_NAME, OUTPUT_NAME
from .protocol import ArtifactDescription, Runner, TargetOptions, size_on_disk

DEPLOYMENT_TARGET = "iOS16"


def export_coreml(
    model: nn.Module, example: torch.Tensor, path: Path, precision: Precision = Precision.FP16
) -> CoreMLDetails:
    """Convert ``model`` (fixed input shape of ``example``) to an ``.mlpackage`` at ``path``.

    Args:
        model: the reparameterized eval-mode model.
        example: an input of the exact shape the package accepts.
        path: destination ``.mlpackage`` directory (the caller stages it).
        precision: compute precision; inputs and outputs stay float32.

    Returns:
        What was done: capture method (and why it fell back), precision, deployment target, input shape.
    """
    import coremltools as ct

    from deployforge.trace import capture

    traced = capture(model, example, dynamic_batch=False)
    program = traced.program
    if traced.capture is Capture.TORCH_EXPORT:
        program = program.run_decompositions({})
    compute = ct.precision.FLOAT16 if precision is Precision.FP16 else ct.precision.FLOAT32
    # Written straight to `path`: left to itself, coremltools saves a temporary package that only the MLModel's
    # finalizer deletes, and every conversion in a long process leaked one (up to 300 MB) into the temp dir.
    ct.convert(
        program,
        inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)],
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        compute_precision=compute,
        package_dir=str(path),
        skip_model_load=True,  # nothing predicts through this object (Core ML predicts on macOS only)
    )
    return CoreMLDetails(
        capture=traced.capture,
        fallback_reason=traced.fallback_reason,
        precision=precision,
        deployment_target=DEPLOYMENT_TARGET,
        input_shape=tuple(example.shape),
    )


def describe_package(path: Path) -> PackageSpec:
    """Read an ``.mlpackage``'s spec (no prediction): its inputs, outputs, spec version and model type.

    Raises:
        Exception: the package is unreadable.
    """
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))

    def arrays(features) -> dict[str, tuple[int, ...]]:
        return {f.name: tuple(f.type.multiArrayType.shape) for f in features}

    return PackageSpec(
        inputs=arrays(spec.description.input),
        outputs=arrays(spec.description.output),
        spec_version=spec.specificationVersion,
        model_type=spec.WhichOneof("Type"),
    )


class CoreMLTarget:
    """An ML program package; run here by :mod:`deployforge.mlprogram` (coremltools predicts only on macOS)."""

    name = "coreml"
    runtime = "coreml-interpreter"
    package = "coremltools"
    extra = None
    rewrites: tuple[str, ...] = ()

    def files(self, model: str) -> tuple[str, ...]:
        """``MODEL.mlpackage`` (a directory)."""
        return (f"{model}.mlpackage",)

    def require(self) -> None:
        """Nothing to check: coremltools is a core dependency."""

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Convert ``model`` at ``options.precision``, fixed to ``example``'s shape."""
        details = export_coreml(model, example, directory / self.files(name)[0], options.precision)
        return {"precision": details.precision.value, "deployment target": details.deployment_target}

    def load(self, path: Path, threads: int = 1) -> Runner:
        """The package's program in the numpy interpreter (``threads`` is numpy's business: ignored)."""
        from deployforge.mlprogram import load_program

        program = load_program(path)
        (input_name,) = program.input_names
        (output_name,) = program.output_names
        return lambda inputs: program.run({input_name: inputs})[output_name]

    def describe(self, path: Path) -> ArtifactDescription:
        """The package's declared inputs and outputs, and the op histogram of its main function."""
        from collections import Counter

        from deployforge.mlprogram.program import read_spec

        package = describe_package(path)
        ops = Counter(op.type for op in read_spec(path).operations)
        return ArtifactDescription(
            inputs=package.inputs,
            outputs=package.outputs,
            ops=dict(ops),
            size_bytes=size_on_disk(path),
            facts={"model type": package.model_type, "spec version": str(package.spec_version)},
        )


TARGET = CoreMLTarget()
