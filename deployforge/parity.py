"""Parity metrics between a candidate's outputs and the original model's, and per-stage tolerances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerances:
    """The rel-L2 bound of every stage (docs/design.md, "Parity and tolerances").

    Attributes:
        eager: the torch stages (fuse, reparameterize, trace).
        onnx: an ONNX artifact run by onnxruntime.
        coreml_fp32: a Core ML package at FP32 compute precision.
        coreml_fp16: a Core ML package at FP16 compute precision.
        min_top1_fp16: the top-1 agreement an FP16 package must reach besides its rel-L2 bound.
        runtime: the artifact of any other registered target (ExecuTorch, LiteRT, ncnn, ONNX Runtime Mobile), run
            by its own runtime at FP32.
    """

    eager: float = 1e-5
    onnx: float = 1e-5
    coreml_fp32: float = 1e-4
    coreml_fp16: float = 1e-2
    min_top1_fp16: float = 0.95
    runtime: float = 1e-5

    def min_top1_for_stage(self, stage: str) -> float | None:
        """The top-1 agreement a stage must reach besides its rel-L2 bound (only Core ML FP16 has one)."""
        return self.min_top1_fp16 if stage == "coreml-fp16" else None

    def for_stage(self, stage: str) -> float:
        """The bound of a waterfall stage by its name (``fuse`` … ``onnx``, ``coreml-fp16``).

        Raises:
            KeyError: an unknown stage.
        """
        from .targets import REGISTERED

        eager = dict.fromkeys(("fuse", "reparameterize", "trace"), self.eager)
        return {
            **dict.fromkeys(REGISTERED, self.runtime),
            **eager,
            "onnx": self.onnx,
            "onnxsim": self.onnx,
            "onnx-multibranch": self.onnx,
            "coreml-fp32": self.coreml_fp32,
            "coreml-fp16": self.coreml_fp16,
        }[stage]


TOLERANCES = Tolerances()


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
        ok: rel-L2 is within tolerance (NaN never is), and top-1 agreement reaches ``min_top1`` when set.
        min_top1: the top-1 agreement this stage must also reach (Core ML FP16), or ``None``.
    """

    rel_l2: float
    max_abs: float
    cosine: float
    top1: float
    top5: float
    tolerance: float
    ok: bool
    min_top1: float | None = None

    def failure(self) -> str | None:
        """Why the comparison fails, in a few words, or ``None`` when it passes."""
        if not np.isfinite(self.rel_l2):
            return (
                "outputs are not finite (NaN or inf; an FP16 artifact overflows past float16's 65504, "
                "and --precision fp32 avoids it)"
            )
        if not self.rel_l2 <= self.tolerance:
            return f"rel-L2 {self.rel_l2:.3g} > {self.tolerance:g}"
        if self.min_top1 is not None and self.top1 < self.min_top1:
            return f"top-1 agreement {self.top1:.3g} < {self.min_top1:g}"
        return None


def compare(candidate: np.ndarray, original: np.ndarray, tolerance: float, min_top1: float | None = None) -> Parity:
    """Compare logits ``candidate`` with ``original`` (both ``(batch, classes)``).

    Args:
        candidate: outputs of the stage under test.
        original: outputs of the multi-branch original.
        tolerance: rel-L2 bound for this stage.
        min_top1: top-1 agreement the stage must also reach, or ``None``.

    Returns:
        The metrics.
    """
    a = np.asarray(candidate, dtype=np.float64).reshape(len(original), -1)
    b = np.asarray(original, dtype=np.float64).reshape(len(original), -1)
    diff = a - b
    norm_b = np.linalg.norm(b)
    rel = float(np.linalg.norm(diff) / norm_b) if norm_b > 0 else float(np.linalg.norm(diff))
    cos = float((a * b).sum() / max(np.linalg.norm(a) * norm_b, 1e-300))
    top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
    k = min(5, b.shape[1])
    top5_a, top5_b = np.argsort(-a, axis=1)[:, :k], np.argsort(-b, axis=1)[:, :k]
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(top5_a, top5_b, strict=True)])
    return Parity(
        rel_l2=rel,
        max_abs=float(np.abs(diff).max()),
        cosine=cos,
        top1=top1,
        top5=float(overlap),
        tolerance=tolerance,
        ok=bool(rel <= tolerance) and (min_top1 is None or top1 >= min_top1),
        min_top1=min_top1,
    )
