"""Run the stages in order and prove parity at each: fuse → reparameterize → trace → ONNX / Core ML.

The original multi-branch model is kept; every stage's output is compared against it on the same batch
(the parity waterfall). Artifacts are staged in a temporary directory and moved into place only when
every stage is within tolerance, so a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import DeployforgeError
from .export import onnx as onnx_export
from .fuse import fuse_batchnorm
from .manifest import artifact_digest, tool_versions, write_manifest
from .measure import onnx_macs, onnx_params, torch_macs, torch_params
from .parity import TOLERANCES, Parity, compare
from .registry import ModelSpec
from .reparam import reparameterize
from .stress import stress_weights
from .trace import trace
from .weights import load_weights, sha256_file

TARGETS = ("onnx", "coreml", "all")
PARITY_BATCH = 8
DEFAULT_SEED = 0

Progress = Callable[[str], None]


@dataclass
class StageRecord:
    """One row of the parity waterfall.

    Attributes:
        stage: stage name (``fuse``, ``reparameterize``, ``trace``, ``onnx``, ...).
        parity: agreement with the original, or ``None`` where numerics cannot be run here.
        details: what the stage changed (counts, paths, capture method).
    """

    stage: str
    parity: Parity | None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {"stage": self.stage, "parity": self.parity.as_dict() if self.parity else None, **self.details}


@dataclass
class Report:
    """Result of an export or a verification.

    Attributes:
        model: registry name.
        stages: the parity waterfall, in pipeline order.
        breaches: human-readable failures (stage over tolerance, altered artifact, bad spec).
        card: the manifest content (export) or the manifest read back (verify).
        directory: where the artifacts are.
    """

    model: str
    stages: list[StageRecord]
    breaches: list[str]
    card: dict
    directory: Path | None = None

    @property
    def ok(self) -> bool:
        """True when nothing breached."""
        return not self.breaches

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "model": self.model,
            "ok": self.ok,
            "directory": str(self.directory) if self.directory else None,
            "breaches": self.breaches,
            "stages": [s.as_dict() for s in self.stages],
        }


def _noop(_: str) -> None:
    pass


def build_original(spec: ModelSpec, weights: Path | None, seed: int = DEFAULT_SEED) -> nn.Module:
    """Build the train-time model from the checkpoint at ``weights`` (strict), or from seeded random weights.

    Random weights get BatchNorm statistics and layer scales drawn far from their init values
    (:func:`deployforge.stress.stress_weights`): with identity-like init every fold is trivially exact
    and the parity waterfall would prove nothing.
    """
    torch.manual_seed(seed)
    model = spec.build()
    if weights is not None:
        load_weights(model, spec, Path(weights))
    else:
        stress_weights(model, seed)
    return model.eval()


def parity_inputs(input_size: int, count: int = PARITY_BATCH, seed: int = DEFAULT_SEED) -> torch.Tensor:
    """A reproducible batch of normalized-image-like inputs ``N(0, 1)`` of shape ``(count, 3, H, H)``."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(count, 3, input_size, input_size, generator=generator)


def _logits(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(inputs).numpy()


def eager_stages(
    original: nn.Module, inputs: torch.Tensor, reference: np.ndarray, progress: Progress = _noop
) -> tuple[dict[str, object], list[StageRecord]]:
    """Run fuse, reparameterize and trace, comparing each against ``reference`` (the original's logits).

    Returns:
        The stage outputs (``fused``, ``reparameterized``, ``traced``) and their waterfall rows.
    """
    probe = inputs[:2]
    progress("fuse BatchNorm")
    fused, fuse_report = fuse_batchnorm(original, probe)
    rows = [
        StageRecord(
            "fuse",
            compare(_logits(fused, inputs), reference, TOLERANCES["eager"]),
            {"bns_folded": len(fuse_report.folded), "bns_left_for_merge": len(fuse_report.skipped)},
        )
    ]
    progress("reparameterize branches")
    merged, count = reparameterize(fused)
    rows.append(
        StageRecord(
            "reparameterize",
            compare(_logits(merged, inputs), reference, TOLERANCES["eager"]),
            {
                "branches_merged": count.branches,
                "layer_scales_folded": count.layer_scales,
                "norms_folded": count.norms,
            },
        )
    )
    progress("trace (torch.export, dynamic batch)")
    traced = trace(merged, probe)
    rows.append(
        StageRecord(
            "trace",
            compare(_logits(traced.module(), inputs), reference, TOLERANCES["eager"]),
            {"path": traced.path, "fallback_reason": traced.fallback_reason},
        )
    )
    return {"fused": fused, "reparameterized": merged, "traced": traced}, rows


def onnx_record(
    stage: str, source: Path | bytes, inputs: torch.Tensor, reference: np.ndarray, **details
) -> StageRecord:
    """Run an ONNX model with onnxruntime and compare it with the original's logits."""
    outputs = onnx_export.run_onnx(source, inputs.numpy())
    return StageRecord(stage, compare(outputs, reference, TOLERANCES["onnx"]), details)


def breaches_of(rows: list[StageRecord]) -> list[str]:
    """Every stage over tolerance, in pipeline order."""
    return [
        f"{r.stage}: rel-L2 {r.parity.rel_l2:.3g} > {r.parity.tolerance:g}"
        for r in rows
        if r.parity is not None and not r.parity.ok
    ]


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".deployforge-probe"):
            pass
    except OSError as error:
        raise DeployforgeError(
            f"output directory {out} is not writable ({error.strerror}); pass --out to a writable directory"
        ) from None


def _onnx_artifacts(
    spec: ModelSpec,
    stage_models: dict,
    original: nn.Module,
    inputs: torch.Tensor,
    reference: np.ndarray,
    staging: Path,
    opset: int,
    batch: int | None,
    progress: Progress,
) -> tuple[list[StageRecord], dict]:
    probe = inputs[:2]
    progress("export ONNX (reparameterized)")
    model = onnx_export.export_onnx(stage_models["traced"], probe, opset)
    if batch is not None:
        model = _fix_batch(model, batch)
    rows = [onnx_record("onnx", model.SerializeToString(), inputs[: batch or None], reference[: batch or None])]
    simplified, note = onnx_export.simplify(model)
    if simplified is not None:
        candidate = onnx_record(
            "onnxsim", simplified.SerializeToString(), inputs[: batch or None], reference[: batch or None]
        )
        if candidate.parity.ok:
            model, rows = simplified, [*rows, candidate]
        else:
            note += f"; discarded (rel-L2 {candidate.parity.rel_l2:.3g})"
    rows[-1].details.update({"opset": opset, "ir_version": model.ir_version, "simplify": note})
    onnx_export.save_onnx(model, staging / f"{spec.name}.onnx")

    progress("export ONNX (multi-branch original, for bench)")
    original_trace = trace(original, probe)
    multi = onnx_export.export_onnx(original_trace, probe, opset)
    if batch is not None:
        multi = _fix_batch(multi, batch)
    onnx_export.save_onnx(multi, staging / f"{spec.name}.multibranch.onnx")
    rows.append(
        onnx_record(
            "onnx-multibranch",
            staging / f"{spec.name}.multibranch.onnx",
            inputs[: batch or None],
            reference[: batch or None],
        )
    )
    size = {
        "params_onnx": onnx_params(model),
        "macs_onnx": onnx_macs(model),
        "params_onnx_multibranch": onnx_params(multi),
        "macs_onnx_multibranch": onnx_macs(multi),
        "onnx_nodes": len(model.graph.node),
        "onnx_batchnorm_nodes": sum(n.op_type == "BatchNormalization" for n in model.graph.node),
    }
    return rows, size


def _fix_batch(model, batch: int):
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    return onnx_export.finalize(model)


def _coreml_artifact(
    spec: ModelSpec,
    merged: nn.Module,
    input_size: int,
    staging: Path,
    precision: str,
    batch: int | None,
    progress: Progress,
) -> StageRecord:
    from .export.coreml import describe_package, export_coreml

    progress(f"export Core ML ({precision})")
    example = parity_inputs(input_size, count=batch or 1)
    path = staging / f"{spec.name}.mlpackage"
    done = export_coreml(merged, example, path, precision)
    described = describe_package(path)
    return StageRecord(
        f"coreml-{precision}",
        None,
        {**done, "spec": described, "numerics": "not run here: Core ML predicts only on macOS"},
    )


def export(
    spec: ModelSpec,
    to: str = "all",
    out: Path = Path("deployforge-out"),
    weights: Path | None = None,
    precision: str = "fp16",
    opset: int = onnx_export.DEFAULT_OPSET,
    batch: int | None = None,
    input_size: int | None = None,
    progress: Progress = _noop,
) -> Report:
    """Run the whole pipeline for ``spec`` and write ``OUT/MODEL/`` (artifacts + manifest.json).

    Args:
        spec: the registered model.
        to: ``onnx``, ``coreml`` or ``all``.
        out: output root; the model's directory is replaced as a whole on success.
        weights: a checkpoint to load strictly, or ``None`` for seeded random weights.
        precision: Core ML compute precision, ``fp16`` or ``fp32``.
        opset: ONNX opset.
        batch: fixed batch size, or ``None`` for a dynamic batch (Core ML then uses batch 1).
        input_size: square input side (default: the variant's published size).
        progress: called with a short description as each stage starts.

    Returns:
        The report; ``report.ok`` is False (and nothing is written) if any stage breached tolerance.

    Raises:
        DeployforgeError: bad arguments, unreadable or mismatched weights, unwritable output.
    """
    if to not in TARGETS:
        raise DeployforgeError(f"unknown --to '{to}'; choose one of {', '.join(TARGETS)}")
    if precision not in ("fp16", "fp32"):
        raise DeployforgeError(f"unknown --precision '{precision}'; choose fp16 or fp32")
    if batch is not None and batch < 1:
        raise DeployforgeError(f"--batch must be a positive integer or 'dynamic', got {batch}")
    input_size = input_size or spec.input_size
    out = Path(out)
    started = time.time()
    progress("build the multi-branch original")
    original = build_original(spec, weights)  # bad weights fail before anything is created on disk
    _check_writable(out)
    inputs = parity_inputs(input_size)
    reference = _logits(original, inputs)
    stage_models, rows = eager_stages(original, inputs, reference, progress)
    merged = stage_models["reparameterized"]

    staging_root = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=out))
    staging = staging_root / spec.name
    staging.mkdir()
    try:
        size = {
            "params_train": torch_params(original),
            "params_reparam_torch": torch_params(reparameterize(original)[0]),
            "params_deployed_torch": torch_params(merged),
            "macs_torch": torch_macs(merged, inputs[:1]),
        }
        if to in ("onnx", "all"):
            onnx_rows, onnx_size = _onnx_artifacts(
                spec, stage_models, original, inputs, reference, staging, opset, batch, progress
            )
            rows += onnx_rows
            size |= onnx_size
        if to in ("coreml", "all"):
            rows.append(_coreml_artifact(spec, merged, input_size, staging, precision, batch, progress))
        breaches = breaches_of(rows)
        card = _card(spec, rows, size, weights, input_size, batch, precision, staging, started)
        report = Report(spec.name, rows, breaches, card)
        if breaches:
            return report
        write_manifest(staging, card)
        final = out / spec.name
        if final.exists():
            trash = staging_root / ".previous"
            os.replace(final, trash)
        os.replace(staging, final)
        report.directory = final
        return report
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


def _card(
    spec: ModelSpec,
    rows: list[StageRecord],
    size: dict,
    weights: Path | None,
    input_size: int,
    batch: int | None,
    precision: str,
    staging: Path,
    started: float,
) -> dict:
    batch_dim = batch if batch is not None else "batch"
    return {
        "model": spec.name,
        "family": spec.family,
        "input": {
            "name": onnx_export.INPUT_NAME,
            "shape": [batch_dim, 3, input_size, input_size],
            "dtype": "float32",
            "layout": "NCHW, RGB scaled to [0, 1] then normalized",
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        "output": {"name": onnx_export.OUTPUT_NAME, "shape": [batch_dim, "classes"]},
        "weights": (
            {"source": str(Path(weights).resolve()), "sha256": sha256_file(Path(weights))}
            if weights is not None
            else {"source": f"random, stressed BN statistics and layer scales (seed {DEFAULT_SEED})", "sha256": None}
        ),
        "seed": DEFAULT_SEED,
        "precision": precision,
        "parity_inputs": {"count": PARITY_BATCH, "distribution": "N(0, 1)", "seed": DEFAULT_SEED + 1},
        "stages": [r.as_dict() for r in rows],
        "size": {
            **size,
            "reference_params_m": spec.params_m,
            "reference_gmacs_at_published_size": spec.gmacs,
        },
        "tools": tool_versions(),
        "artifacts": {p.name: artifact_digest(p) for p in sorted(staging.iterdir())},
        "seconds": round(time.time() - started, 1),
    }
