"""Parity metrics between a candidate's outputs and the original model's, and per-stage tolerances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# docs/design.md, "Parity and tolerances": eager stages and ONNX within 1e-5; Core ML FP32 1e-4, FP16 1e-2
# with top-1 agreement ≥ 0.95.
TOLERANCES: dict[str, float] = {"eager": 1e-5, "onnx": 1e-5, "coreml-fp32": 1e-4, "coreml-fp16": 1e-2}
MIN_TOP1_FP16 = 0.95


@dataclass(frozen=True)
class Parity:
    """Agreement of a candidate with the original on one batch.

    Attributes:
        rel_l2: ``‖a − b‖₂ / ‖b‖₂``.
        max_abs: largest absolute difference.
        cosine: cosine similarity of the flattened outputs.
        top1: fraction of inputs whose arg-max class agrees.
        top5: mean overlap of the top-5 class sets.
        tolerance: the rel-L2 bound this stage must meet.
        ok: rel-L2 is within tolerance (NaN never is).
    """

    rel_l2: float
    max_abs: float
    cosine: float
    top1: float
    top5: float
    tolerance: float
    ok: bool


def compare(candidate: np.ndarray, original: np.ndarray, tolerance: float) -> Parity:
    """Compare logits ``candidate`` with ``original`` (both ``(batch, classes)``).

    Args:
        candidate: outputs of the stage under test.
        original: outputs of the multi-branch original.
        tolerance: rel-L2 bound for this stage.

    Returns:
        The metrics.
    """
    a = np.asarray(candidate, dtype=np.float64).reshape(len(original), -1)
    b = np.asarray(original, dtype=np.float64).reshape(len(original), -1)
    diff = a - b
    norm_b = np.linalg.norm(b)
    rel = float(np.linalg.norm(diff) / norm_b) if norm_b > 0 else float(np.linalg.norm(diff))
    cos = float((a * b).sum() / max(np.linalg.norm(a) * norm_b, 1e-300))
    k = min(5, b.shape[1])
    top5_a, top5_b = np.argsort(-a, axis=1)[:, :k], np.argsort(-b, axis=1)[:, :k]
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(top5_a, top5_b, strict=True)])
    return Parity(
        rel_l2=rel,
        max_abs=float(np.abs(diff).max()),
        cosine=cos,
        top1=float(np.mean(a.argmax(1) == b.argmax(1))),
        top5=float(overlap),
        tolerance=tolerance,
        ok=bool(rel <= tolerance),
    )
