"""The interface every export target implements, and the records it returns.

A target turns the reparameterized model into an artifact for one runtime (``export``), runs that artifact on
inputs with the runtime itself (``load``), and says what the artifact holds (``describe``). The pipeline,
``verify`` and ``bench`` know targets only through this protocol and the registration in
:mod:`deployforge.targets`. Nothing here imports torch or a runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from deployforge.errors import DeployforgeError
from deployforge.options import DEFAULT_OPSET, Precision

if TYPE_CHECKING:
    import torch
    from torch import nn

Runner = Callable[[np.ndarray], np.ndarray]
"""A loaded artifact: ``(B, 3, H, W)`` float32 inputs (B the artifact's batch) → ``(B, classes)`` float32."""


class MissingExtra(DeployforgeError):
    """A target's runtime is not installed: the message names the pip extra that installs it."""

    def __init__(self, target: str, package: str, extra: str) -> None:
        super().__init__(
            f"the {target} target needs {package}, which is not installed; "
            f"install it with: pip install 'deployforge[{extra}]'"
        )
        self.extra = extra


class ExportRefused(DeployforgeError):
    """The runtime converted the model, but not in a form the target accepts (e.g. not fully delegated).

    The CLI exits 1; the message says which option accepts the result anyway.
    """

    exit_code = 1


@dataclass(frozen=True)
class TargetOptions:
    """Target-specific export choices (each target reads the ones it knows).

    Attributes:
        allow_partial: ExecuTorch: accept a graph that XNNPACK does not delegate whole (ops left to the portable
            CPU kernels), instead of refusing it.
        rewrites: names of numerically exact graph rewrites to apply before lowering (a target lists the ones
            it offers in ``Target.rewrites``).
        precision: Core ML compute precision.
        opset: ONNX opset (ONNX and ONNX Runtime Mobile).
    """

    allow_partial: bool = False
    rewrites: tuple[str, ...] = ()
    precision: Precision = Precision.FP16
    opset: int = DEFAULT_OPSET


@dataclass(frozen=True)
class ArtifactDescription:
    """What an artifact holds, read back from the file.

    Attributes:
        inputs: input name → shape (a symbolic dimension by its name).
        outputs: output name → shape.
        ops: operator (or delegate / layer type) → count, as the runtime's format lists them.
        size_bytes: bytes on disk, companion files included.
        facts: target-specific facts worth a line (``delegated``: ``212 of 212 ops``).
    """

    inputs: dict[str, tuple[int | str, ...]]
    outputs: dict[str, tuple[int | str, ...]]
    ops: dict[str, int]
    size_bytes: int
    facts: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Target(Protocol):
    """One export target: an artifact format and the runtime that runs it.

    Attributes:
        name: the ``--to`` value and the waterfall row's stage (``executorch``).
        runtime: the ``bench --runtimes`` value of the runtime that runs the artifact (``executorch``).
        package: the distribution whose version is the runtime's (``executorch``, ``ai-edge-litert``).
        extra: the pip extra that installs the runtime and its converter (``None``: always installed).
        rewrites: the exact graph rewrites this target offers (:attr:`TargetOptions.rewrites`).
    """

    name: str
    runtime: str
    package: str
    extra: str | None
    rewrites: tuple[str, ...]

    def files(self, model: str) -> tuple[str, ...]:
        """The files an export of ``model`` writes, the primary artifact first."""
        ...

    def require(self) -> None:
        """Check that the runtime and converter import.

        Raises:
            MissingExtra: they do not; the message names the extra.
        """
        ...

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Write the artifact of ``model`` (reparameterized, eval mode), fixed to ``example``'s shape.

        Args:
            model: the model to convert.
            example: an input of the shape the artifact takes.
            directory: where to write ``files(name)`` (the caller stages it and moves it into place).
            name: the model's name, for the file names.
            options: target-specific choices.

        Returns:
            Facts about the conversion for the manifest (``delegated``: ``212 of 212 ops``).

        Raises:
            ExportRefused: the result is not acceptable under ``options``.
        """
        ...

    def load(self, path: Path, threads: int = 1) -> Runner:
        """Open the artifact at ``path`` (the primary file) in its runtime, with ``threads`` threads."""
        ...

    def describe(self, path: Path) -> ArtifactDescription:
        """Read the artifact at ``path`` back: inputs, outputs, op counts, size."""
        ...


def run_in_batches(runner: Runner, inputs: np.ndarray, batch: int) -> np.ndarray:
    """Run ``inputs`` (any count) through an artifact of fixed ``batch``, padding the last group with repeats."""
    count = len(inputs)
    padded = np.concatenate([inputs, np.repeat(inputs[:1], -count % batch, axis=0)])
    outputs = [np.asarray(runner(padded[i : i + batch]), dtype=np.float32) for i in range(0, len(padded), batch)]
    return np.concatenate(outputs).reshape(len(padded), -1)[:count]


def size_on_disk(*paths: Path) -> int:
    """Bytes of the files (or directories, summed over their files) at ``paths``."""
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        else:
            total += path.stat().st_size
    return total
