"""Run the stages in order and prove parity at each: fuse → reparameterize → trace → ONNX / Core ML.

The original multi-branch model is kept; every stage's output is compared against it on the same batch
(the parity waterfall). Artifacts are staged in a temporary directory and moved into place only when
every stage is within tolerance, so a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .errors import InvalidSetting
from .export import onnx as onnx_export
from .fuse import FuseReport, fuse_batchnorm
from .manifest import (
    SCHEMA_VERSION,
    InputSpec,
    Manifest,
    OutputSpec,
    ParityInputs,
    WeightsSource,
    artifact_digest,
    sha256_file,
    tool_versions,
)
from .measure import SizeReport, torch_macs, torch_params
from .options import ExportSettings
from .parity import TOLERANCES, compare
from .registry import ModelSpec
from .reparam import reparameterize
from .report import (
    CaptureDetails,
    FuseDetails,
    MergeDetails,
    OnnxDetails,
    Report,
    StageRecord,
    breaches_of,
)
from .staging import staged
from .stress import stress_weights
from .trace import Traced, trace
from .weights import load_weights

PARITY_BATCH = 8
DEFAULT_SEED = 0  # seed of the random weights
PARITY_SEED = 1  # seed of the parity inputs
PARITY_DISTRIBUTION = "N(0, 1)"

Progress = Callable[[str], None]


@dataclass
class StageOutputs:
    """The models the eager stages produced, and what each changed.

    Attributes:
        fused: the original with BatchNorms folded.
        fuse_report: the folds made and the BatchNorms left.
        reparameterized: the fused model with its branches merged.
        traced: the captured graph of the reparameterized model.
    """

    fused: nn.Module
    fuse_report: FuseReport
    reparameterized: nn.Module
    traced: Traced


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


def weights_source(weights: Path | None, seed: int = DEFAULT_SEED) -> WeightsSource:
    """Describe where the weights of an export come from."""
    if weights is None:
        return WeightsSource(f"random, stressed BN statistics and layer scales (seed {seed})", None, seed)
    return WeightsSource(str(Path(weights).resolve()), sha256_file(Path(weights)), seed)


def parity_inputs(input_size: int, count: int = PARITY_BATCH, seed: int = PARITY_SEED) -> torch.Tensor:
    """A reproducible batch of normalized-image-like inputs ``N(0, 1)`` of shape ``(count, 3, H, H)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, input_size, input_size, generator=generator)


def fit_batch(values: torch.Tensor | np.ndarray, batch: int | None) -> torch.Tensor | np.ndarray:
    """The parity batch as a graph of fixed ``batch`` takes it: cut to ``batch``, or repeated up to it."""
    if batch is None or batch == len(values):
        return values
    repeats = -(-batch // len(values))
    tiled = torch.cat([values] * repeats) if isinstance(values, torch.Tensor) else np.concatenate([values] * repeats)
    return tiled[:batch]


def logits(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Run ``model`` on ``inputs`` without gradients; return the outputs as a numpy array."""
    with torch.no_grad():
        return model(inputs).numpy()


def eager_stages(
    original: nn.Module, inputs: torch.Tensor, reference: np.ndarray, progress: Progress = _noop
) -> tuple[StageOutputs, list[StageRecord]]:
    """Run fuse, reparameterize and trace, comparing each against ``reference`` (the original's logits).

    Returns:
        The stage outputs and their waterfall rows.
    """
    probe, tolerance = inputs[:2], TOLERANCES.eager
    progress("fuse BatchNorm")
    fused, fuse_report = fuse_batchnorm(original, probe)
    rows = [
        StageRecord(
            "fuse",
            compare(logits(fused, inputs), reference, tolerance),
            FuseDetails(bns_folded=len(fuse_report.folded), bns_left_for_merge=len(fuse_report.skipped)),
        )
    ]
    progress("reparameterize branches")
    merged, count = reparameterize(fused)
    rows.append(
        StageRecord(
            "reparameterize",
            compare(logits(merged, inputs), reference, tolerance),
            MergeDetails(
                branches_merged=count.branches, layer_scales_folded=count.layer_scales, norms_folded=count.norms
            ),
        )
    )
    progress("trace (torch.export, dynamic batch)")
    traced = trace(merged, probe)
    rows.append(
        StageRecord(
            "trace",
            compare(logits(traced.module(), inputs), reference, tolerance),
            CaptureDetails(capture=traced.capture, fallback_reason=traced.fallback_reason),
        )
    )
    return StageOutputs(fused, fuse_report, merged, traced), rows


def onnx_record(
    stage: str,
    source: Path | bytes,
    inputs: torch.Tensor,
    reference: np.ndarray,
    details: OnnxDetails | None = None,
    file: str | None = None,
) -> StageRecord:
    """Run an ONNX model with onnxruntime and compare it with the original's logits."""
    outputs = onnx_export.run_onnx(source, inputs.numpy())
    return StageRecord(stage, compare(outputs, reference, TOLERANCES.onnx), details or OnnxDetails(), file=file)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".deployforge-probe"):
            pass
    except OSError as error:
        raise InvalidSetting(
            "out", f"output directory {out} is not writable ({error.strerror}); choose a writable directory"
        ) from None


@dataclass
class _Run:
    """What every artifact step of one export reads."""

    spec: ModelSpec
    settings: ExportSettings
    original: nn.Module
    stages: StageOutputs
    inputs: torch.Tensor
    reference: np.ndarray
    staging: Path
    progress: Progress


def _onnx_artifacts(run: _Run) -> tuple[list[StageRecord], onnx.ModelProto, onnx.ModelProto]:
    spec, settings, probe = run.spec, run.settings, run.inputs[:2]
    inputs, reference = fit_batch(run.inputs, settings.batch), fit_batch(run.reference, settings.batch)
    run.progress("export ONNX (reparameterized)")
    model = onnx_export.export_onnx(run.stages.traced, probe, settings.opset, settings.batch)
    rows = [onnx_record("onnx", model.SerializeToString(), inputs, reference)]
    simplified, note = onnx_export.simplify(model, settings.batch)
    if simplified is not None:
        candidate = onnx_record("onnxsim", simplified.SerializeToString(), inputs, reference)
        if candidate.parity.ok:
            model = simplified
            rows.append(candidate)
        else:
            note += f"; discarded (rel-L2 {candidate.parity.rel_l2:.3g})"
    name = f"{spec.name}.onnx"
    details = OnnxDetails(opset=settings.opset, ir_version=model.ir_version, simplify=note)
    rows[-1] = replace(rows[-1], details=details, file=name)
    onnx_export.save_onnx(model, run.staging / name)

    run.progress("export ONNX (multi-branch original, for bench)")
    multi_name = f"{spec.name}.multibranch.onnx"
    multi = onnx_export.export_onnx(trace(run.original, probe), probe, settings.opset, settings.batch)
    onnx_export.save_onnx(multi, run.staging / multi_name)
    rows.append(onnx_record("onnx-multibranch", run.staging / multi_name, inputs, reference, file=multi_name))
    return rows, model, multi


def _coreml_artifact(run: _Run, input_size: int) -> StageRecord:
    from .export.coreml import describe_package, export_coreml

    precision = run.settings.precision
    run.progress(f"export Core ML ({precision.value})")
    name = f"{run.spec.name}.mlpackage"
    example = parity_inputs(input_size, count=run.settings.batch or 1)
    details = export_coreml(run.stages.reparameterized, example, run.staging / name, precision)
    package = describe_package(run.staging / name)
    return StageRecord(f"coreml-{precision.value}", None, replace(details, package=package), file=name)


def export(
    spec: ModelSpec,
    settings: ExportSettings | None = None,
    out: Path = Path("deployforge-out"),
    weights: Path | None = None,
    progress: Progress = _noop,
) -> Report:
    """Run the whole pipeline for ``spec`` and write ``OUT/MODEL/`` (artifacts + manifest.json).

    Args:
        spec: the registered model.
        settings: target, precision, opset, batch and input size (default: ``ExportSettings()``).
        out: output root; the model's directory is replaced as a whole on success.
        weights: a checkpoint to load strictly, or ``None`` for seeded random weights.
        progress: called with a short description as each stage starts.

    Returns:
        The report; ``report.ok`` is False (and nothing is written) if any stage breached tolerance.

    Raises:
        DeployforgeError: unreadable or mismatched weights, unwritable output.
    """
    settings = settings or ExportSettings()
    input_size = settings.input_size or spec.input_size
    out = Path(out)
    started = time.time()
    progress("build the multi-branch original")
    original = build_original(spec, weights)  # bad weights fail before anything is created on disk
    _check_writable(out)
    inputs = parity_inputs(input_size)
    reference = logits(original, inputs)
    outputs, rows = eager_stages(original, inputs, reference, progress)

    with staged(out / spec.name) as stage:
        stage.path.mkdir()
        run = _Run(spec, settings, original, outputs, inputs, reference, stage.path, progress)
        size = SizeReport(
            params_train=torch_params(original),
            params_reparameterized=torch_params(reparameterize(original)[0]),
            params_deployed_torch=torch_params(outputs.reparameterized),
            macs_torch=torch_macs(outputs.reparameterized, inputs[:1]),
            reference_params_m=spec.reference.params_m,
            reference_gmacs=spec.reference.gmacs,
        )
        if settings.target.writes_onnx:
            onnx_rows, deployed, multi_branch = _onnx_artifacts(run)
            rows += onnx_rows
            size = size.with_onnx(deployed, multi_branch)
        if settings.target.writes_coreml:
            rows.append(_coreml_artifact(run, input_size))
        batch_dim = settings.batch if settings.batch is not None else onnx_export.BATCH_DIM
        manifest = Manifest(
            schema=SCHEMA_VERSION,
            model=spec.name,
            family=spec.family,
            settings=ExportSettings(settings.target, settings.precision, settings.opset, settings.batch, input_size),
            input=InputSpec(
                name=onnx_export.INPUT_NAME,
                shape=(batch_dim, 3, input_size, input_size),
                dtype="float32",
                layout="NCHW, RGB scaled to [0, 1] then normalized",
                mean=tuple(spec.mean),
                std=tuple(spec.std),
            ),
            output=OutputSpec(name=onnx_export.OUTPUT_NAME, shape=(batch_dim, "classes")),
            weights=weights_source(weights),
            parity_inputs=ParityInputs(count=PARITY_BATCH, distribution=PARITY_DISTRIBUTION, seed=PARITY_SEED),
            stages=tuple(rows),
            size=size,
            tools=tool_versions(),
            artifacts={p.name: artifact_digest(p) for p in sorted(stage.path.iterdir())},
            seconds=round(time.time() - started, 1),
        )
        report = Report(spec.name, rows, breaches_of(rows), manifest)
        if report.ok:
            manifest.write(stage.path)
            stage.commit()
            report.directory = out / spec.name
        return report
