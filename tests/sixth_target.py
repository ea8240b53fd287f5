"""A target that is not registered in deployforge: TorchScript, run by torch.jit. Used by tests/test_targets.py.

It shows what adding a target takes: this one module, implementing :class:`deployforge.targets.protocol.Target`,
and one entry in :data:`deployforge.targets.REGISTERED` (the test adds it with monkeypatch). Nothing else in
deployforge knows of it, yet ``export`` writes it and proves it, ``verify`` re-runs it and ``bench --runtimes``
times it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deployforge.targets.protocol import ArtifactDescription, Runner, TargetOptions


class TorchScriptTarget:
    """``MODEL.pt``: the model traced by ``torch.jit.trace``, run by ``torch.jit.load``."""

    name = "torchscript"
    runtime = "torchscript"
    package = "torch"
    extra = None
    rewrites: tuple[str, ...] = ()

    def files(self, model: str) -> tuple[str, ...]:
        """``MODEL.pt``."""
        return (f"{model}.pt",)

    def require(self) -> None:
        """torch is what every export runs on: nothing to check."""

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Trace and save."""
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example), str(directory / self.files(name)[0]))
        return {"tracer": "torch.jit.trace"}

    def load(self, path: Path, threads: int = 1) -> Runner:
        """The saved module, run without gradients."""
        module = torch.jit.load(str(path)).eval()

        def run(inputs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(np.ascontiguousarray(inputs))).numpy()

        return run

    def describe(self, path: Path) -> ArtifactDescription:
        """Node kinds of the saved graph."""
        graph = torch.jit.load(str(path)).inlined_graph
        ops: dict[str, int] = {}
        for node in graph.nodes():
            ops[node.kind()] = ops.get(node.kind(), 0) + 1
        return ArtifactDescription(inputs={}, outputs={}, ops=ops, size_bytes=path.stat().st_size)


TARGET = TorchScriptTarget()
