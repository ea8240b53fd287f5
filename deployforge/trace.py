"""Stage 3: capture the reparameterized model as a graph.

``torch.export`` is the primary path (it converts to both ONNX and Core ML for every shipped family).
If it fails, ``torch.jit.trace`` is the fallback; the record says which method was used and why. The
same :func:`capture` serves the trace stage (dynamic batch) and the Core ML export (fixed shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .options import MAX_BATCH, Capture


@dataclass
class Traced:
    """A captured graph.

    Attributes:
        capture: the method used.
        program: the ExportedProgram (``torch.export``) or ScriptModule (``torch.jit.trace``).
        fallback_reason: why ``torch.export`` was not used, if it was not.
    """

    capture: Capture
    program: object
    fallback_reason: str | None = None

    def module(self) -> nn.Module:
        """Return a callable module running the captured graph."""
        if self.capture is Capture.TORCH_EXPORT:
            return self.program.module()
        return self.program


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def capture(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> Traced:
    """Capture ``model`` on ``example`` with ``torch.export``, falling back to ``torch.jit.trace``.

    Args:
        model: the model; captured in eval mode, its train/eval mode is restored afterwards.
        example: an input of the shape to capture; with ``dynamic_batch`` a batch of 1 is expanded to 2
            (a batch of 1 would be specialized as a constant).
        dynamic_batch: mark dimension 0 dynamic (``1..MAX_BATCH``); otherwise every shape is fixed.

    Returns:
        The captured graph, the method used and, for the fallback, why ``torch.export`` failed.
    """
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] < 2:
            example = example.expand(2, *example.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        return Traced(Capture.TORCH_EXPORT, program)
    except Exception as error:  # noqa: BLE001 - any export failure selects the documented fallback
        with torch.no_grad():
            scripted = torch.jit.trace(model, example, check_trace=False)
        return Traced(Capture.JIT_TRACE, scripted, fallback_reason=_first_line(error))
    finally:
        model.train(was_training)


def trace(model: nn.Module, example: torch.Tensor) -> Traced:
    """Stage 3: :func:`capture` with the batch dimension dynamic.

    Args:
        model: the eval-mode model (not modified).
        example: an input (any batch).

    Returns:
        The captured graph and the method used.
    """
    return capture(model, example, dynamic_batch=True)
