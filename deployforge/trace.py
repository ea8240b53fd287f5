"""Stage 3: capture the reparameterized model as a graph with a dynamic batch dimension.

``torch.export`` is the primary path (it converts to both ONNX and Core ML for every shipped family).
If it fails, ``torch.jit.trace`` is the fallback; the report says which path was used and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MAX_BATCH = 1024


@dataclass
class Traced:
    """A captured graph.

    Attributes:
        path: ``"torch.export"`` or ``"torch.jit.trace"``.
        program: the ExportedProgram (torch.export path) or ScriptModule (fallback).
        fallback_reason: why torch.export was not used, if it was not.
    """

    path: str
    program: object
    fallback_reason: str | None = None

    def module(self) -> nn.Module:
        """Return a callable module running the captured graph."""
        if self.path == "torch.export":
            return self.program.module()
        return self.program


def trace(model: nn.Module, example: torch.Tensor) -> Traced:
    """Capture ``model`` on ``example`` with the batch dimension dynamic.

    Args:
        model: the eval-mode model (not modified).
        example: an input with batch ≥ 2 (a batch of 1 would be specialized as a constant).

    Returns:
        The captured graph and the path used.
    """
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        return Traced("torch.export", program)
    except Exception as error:  # noqa: BLE001 - any export failure selects the documented fallback
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        with torch.no_grad():
            scripted = torch.jit.trace(model, example, check_trace=False)
        return Traced("torch.jit.trace", scripted, fallback_reason=reason)
    finally:
        model.train(was_training)
