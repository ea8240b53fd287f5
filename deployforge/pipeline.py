"""Run the stages in order and prove parity at each: fuse → reparameterize → trace → ONNX / Core ML.

The original multi-branch model is kept; every stage's output is compared against it on the same batch
(the parity waterfall). Artifacts are staged in a temporary directory and moved into place only when
every stage is within tolerance, so a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .audit import audit_onnx
from .condition import ConditioningReport, condition_weights
from .errors import DeployforgeError, InvalidSetting
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
from .options import Capture, ExportSettings
from .parity import TOLERANCES, compare
from .registry import ModelSpec
from .reparam import reparameterize, reparameterize_structure
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
# Young-generation threshold of the cyclic garbage collector while a run lasts (CPython's default is 700).
GC_YOUNG_THRESHOLD = 100_000

Progress = Callable[[str], None]


@dataclass
class StageOutputs:
    """The models the eager stages produced, and what each changed.

    Attributes:
        fused: the original with BatchNorms folded.
        fuse_report: the folds made and the BatchNorms left.
        reparameterized: the fused model with its branches merged.
        traced: the captured graph of the reparameterized model.
        original_traced: the original's dynamic-batch capture the fuse stage found its pairs on, when asked
            for (the export converts it to the multi-branch ONNX); ``None`` otherwise.
    """

    fused: nn.Module
    fuse_report: FuseReport
    reparameterized: nn.Module
    traced: Traced
    original_traced: Traced | None = None


def _noop(_: str) -> None:
    pass


@contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Run the cyclic garbage collector less often while an export or a verification runs; restore it after.

    Capturing and converting graphs allocates millions of short-lived Python objects (FX nodes, fake tensors,
    ONNX IR), and CPython collects its young generation every 700 net allocations: an export and verify of
    FastViT-MA36 ran 2,684 collections taking 3.6 s (3.2 s of it full collections); with a young threshold of
    100,000, 15 collections taking 0.7 s, at the same peak memory (2.8 GB). Nothing is disabled: garbage is
    still collected, in larger batches. Usable as a decorator.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_YOUNG_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def input_size_for(spec: ModelSpec, requested: int | None) -> int:
    """The input side an export of ``spec`` uses: ``requested``, or the variant's published size if ``None``.

    Raises:
        InvalidSetting: ``spec`` has a fixed input size (``ModelSpec.fixed_input_size``) and ``requested``
            is another one.
    """
    if requested is None or requested == spec.input_size:
        return spec.input_size
    if spec.fixed_input_size:
        raise InvalidSetting(
            "input_size",
            f"{spec.name} takes {spec.input_size}x{spec.input_size} inputs only (its learned tables fix the "
            f"token grid); got {requested}: leave the input size out or set it to {spec.input_size}",
        )
    return requested


def build_original(
    spec: ModelSpec,
    weights: Path | None,
    seed: int = DEFAULT_SEED,
    condition: bool = True,
    input_size: int | None = None,
) -> tuple[nn.Module, ConditioningReport | None]:
    """Build the train-time model from the checkpoint at ``weights`` (strict), or from seeded random weights.

    Random weights get BatchNorm statistics and layer scales drawn far from their init values
    (:func:`deployforge.stress.stress_weights`): with identity-like init every fold is trivially exact
    and the parity waterfall would prove nothing. Then, unless ``condition`` is False, their BatchNorm
    statistics are re-estimated on calibration images of the side the model will be checked at
    (:func:`deployforge.condition.condition_weights`), so activations stay in a range float16 can hold.
    A checkpoint is never conditioned.

    Args:
        spec: the registered model.
        weights: a checkpoint, or ``None`` for seeded random weights.
        seed: seed of the random weights and the stress draws.
        condition: condition random weights (``False`` rebuilds an export made before conditioning existed).
        input_size: side of the calibration images (default: the variant's published input size).

    Returns:
        The model in eval mode, and what conditioning did (``None`` if nothing was conditioned).
    """
    torch.manual_seed(seed)
    model = spec.build()
    conditioning = None
    if weights is not None:
        load_weights(model, spec, Path(weights))
    else:
        stress_weights(model, seed)
        if condition:
            conditioning = condition_weights(model, input_size or spec.input_size, spec.mean, spec.std)
    return model.eval(), conditioning


def rebuild_original(spec: ModelSpec, source: WeightsSource) -> nn.Module:
    """Rebuild the original an export was made from, as its manifest's weights record describes it.

    Raises:
        DeployforgeError: the checkpoint is gone or changed, or this deployforge conditions random weights
            otherwise than the export did (another calibration batch, seed or count).
    """
    recorded = source.conditioning
    size = recorded.input_size if recorded is not None else None
    model, conditioning = build_original(spec, source.checkpoint(), source.seed, recorded is not None, size)
    if conditioning is not None and replace(conditioning, description=recorded.description) != recorded:
        raise DeployforgeError(
            f"{spec.name}: the export conditioned its random weights as '{recorded.description}', this deployforge "
            "would condition them otherwise; re-run `deployforge export`"
        )
    return model


def weights_source(
    weights: Path | None, seed: int = DEFAULT_SEED, conditioning: ConditioningReport | None = None
) -> WeightsSource:
    """Describe where the weights of an export come from, and how random weights were conditioned."""
    if weights is None:
        return WeightsSource(f"random, stressed BN statistics and layer scales (seed {seed})", None, seed, conditioning)
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


def _forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    torch.set_num_threads(1)  # this worker's own OpenMP setting (the caller restores the process-wide one)
    with torch.no_grad():  # grad mode is per thread
        return model(inputs)


def logits(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Run ``model`` on ``inputs`` without gradients; return the outputs as a numpy array.

    With torch allowed ``n > 1`` intra-op threads, the batch is cut into ``n`` chunks that ``n`` worker threads
    run at once, one intra-op thread each (torch releases the GIL in its kernels), joined in order: every input
    still goes through the model. Both cores work with no OpenMP barrier to meet at every op. On 2 cores the
    8-image forward of MobileViT v2-2.0 takes 1.2 s this way against 1.4 s with 2 OpenMP threads; with another
    process busy on one core, 2 OpenMP threads were 2-8x slower than one (each op waits for the descheduled
    thread), the chunks are not. The outputs are those of a one-thread forward of each chunk, the same on
    every run; they differ from a 2-thread forward of the whole batch by float rounding (rel-L2 ~1e-7).
    """
    threads = torch.get_num_threads()
    chunks = inputs.tensor_split(min(threads, len(inputs)))
    if len(chunks) < 2:
        with torch.no_grad():
            return model(inputs).numpy()
    try:
        with ThreadPoolExecutor(len(chunks), thread_name_prefix="deployforge-parity") as pool:
            outputs = list(pool.map(_forward, [model] * len(chunks), chunks))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(outputs).numpy()


def eager_stages(
    original: nn.Module,
    inputs: torch.Tensor,
    reference: np.ndarray,
    progress: Progress = _noop,
    capture_original: bool = False,
) -> tuple[StageOutputs, list[StageRecord]]:
    """Run fuse, reparameterize and trace, comparing each against ``reference`` (the original's logits).

    Args:
        original: the multi-branch original (not modified).
        inputs: the parity batch.
        reference: the original's logits on ``inputs``.
        progress: called as each stage starts.
        capture_original: capture the original with a dynamic batch (:func:`deployforge.trace.trace`) and
            find the fuse stage's pairs on that program, returned as ``original_traced`` for the export to
            convert to the multi-branch ONNX: the original is captured once. Otherwise the fuse stage makes
            its own fixed-shape capture (cheaper when nothing else needs one, as in ``verify``).

    Returns:
        The stage outputs and their waterfall rows, each timed (the fuse row includes the capture).
    """
    probe, tolerance = inputs[:2], TOLERANCES.eager
    progress("fuse BatchNorm")
    started = time.perf_counter()
    original_traced = trace(original, probe) if capture_original else None
    program = original_traced.program if original_traced and original_traced.capture is Capture.TORCH_EXPORT else None
    fused, fuse_report = fuse_batchnorm(original, probe, program)
    rows = [
        StageRecord(
            "fuse",
            compare(logits(fused, inputs), reference, tolerance),
            FuseDetails(bns_folded=len(fuse_report.folded), bns_left_for_merge=len(fuse_report.skipped)),
            seconds=_since(started),
        )
    ]
    progress("reparameterize branches")
    started = time.perf_counter()
    merged, count = reparameterize(fused)
    rows.append(
        StageRecord(
            "reparameterize",
            compare(logits(merged, inputs), reference, tolerance),
            MergeDetails(
                branches_merged=count.branches,
                layer_scales_folded=count.layer_scales,
                norms_folded=count.norms,
                tables_gathered=count.tables,
            ),
            seconds=_since(started),
        )
    )
    progress("trace (torch.export, dynamic batch)")
    started = time.perf_counter()
    traced = trace(merged, probe)
    rows.append(
        StageRecord(
            "trace",
            compare(logits(traced.module(), inputs), reference, tolerance),
            CaptureDetails(capture=traced.capture, fallback_reason=traced.fallback_reason),
            seconds=_since(started),
        )
    )
    return StageOutputs(fused, fuse_report, merged, traced, original_traced), rows


def _since(started: float) -> float:
    """Seconds of wall time since ``started`` (a ``time.perf_counter()`` reading), to the millisecond."""
    return round(time.perf_counter() - started, 3)


def onnx_logits(source: Path | bytes, inputs: np.ndarray) -> np.ndarray:
    """Run an ONNX model with onnxruntime on the CPU and return its first output, as :func:`logits` runs torch.

    The session is the one :func:`deployforge.export.onnx.run_onnx` opens (CPU provider, one intra-op thread,
    default graph optimizations), opened once; with torch allowed ``n > 1`` threads and a dynamic batch, ``n``
    threads run one chunk of the batch each on it (onnxruntime releases the GIL and its sessions are
    thread-safe). A graph of fixed batch runs whole.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path_or_bytes = str(source) if isinstance(source, Path) else source
    session = ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    fixed = isinstance(graph_input.shape[0], int)
    chunks = [inputs] if fixed else np.array_split(inputs, min(torch.get_num_threads(), len(inputs)))
    if len(chunks) < 2:
        return session.run(None, {graph_input.name: inputs})[0]
    with ThreadPoolExecutor(len(chunks), thread_name_prefix="deployforge-parity") as pool:
        outputs = list(pool.map(lambda chunk: session.run(None, {graph_input.name: chunk})[0], chunks))
    return np.concatenate(outputs)


def onnx_record(
    stage: str,
    source: Path | bytes,
    inputs: torch.Tensor,
    reference: np.ndarray,
    details: OnnxDetails | None = None,
    file: str | None = None,
) -> StageRecord:
    """Run an ONNX model with onnxruntime and compare it with the original's logits (the row is timed)."""
    started = time.perf_counter()
    outputs = onnx_logits(source, inputs.numpy())
    parity = compare(outputs, reference, TOLERANCES.onnx)
    return StageRecord(stage, parity, details or OnnxDetails(), file=file, seconds=_since(started))


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


def _onnx_artifacts(run: _Run) -> tuple[list[StageRecord], onnx.ModelProto, onnx.ModelProto | None]:
    spec, settings, probe = run.spec, run.settings, run.inputs[:2]
    inputs, reference = fit_batch(run.inputs, settings.batch), fit_batch(run.reference, settings.batch)
    run.progress("export ONNX (reparameterized)")
    started = time.perf_counter()
    model = onnx_export.export_onnx(run.stages.traced, probe, settings.opset, settings.batch)
    rows = [onnx_record("onnx", model.SerializeToString(), inputs, reference)]
    exported = time.perf_counter()
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
    run.progress("audit onnxruntime's optimized graph")
    rows[-1] = replace(rows[-1], details=replace(details, runtime_graph=audit_onnx(run.staging / name)))
    # The row that writes the file is timed up to the file: a kept onnxsim row from onnxsim's start, the onnx
    # row from the export (onnxsim's try included when its graph is not kept).
    if len(rows) == 2:
        rows[0] = replace(rows[0], seconds=round(exported - started, 3))
        started = exported
    rows[-1] = replace(rows[-1], seconds=_since(started))
    if not settings.multibranch:
        return rows, model, None

    run.progress("export ONNX (multi-branch original, for bench)")
    started = time.perf_counter()
    multi_name = f"{spec.name}.multibranch.onnx"
    multi = onnx_export.export_onnx(run.stages.original_traced, probe, settings.opset, settings.batch)
    onnx_export.save_onnx(multi, run.staging / multi_name)
    multi_row = onnx_record("onnx-multibranch", run.staging / multi_name, inputs, reference, file=multi_name)
    rows.append(replace(multi_row, seconds=_since(started)))
    return rows, model, multi


def _coreml_artifact(run: _Run, input_size: int) -> StageRecord:
    from .coreml_parity import coreml_record, parity_batch
    from .export.coreml import describe_package, export_coreml

    precision = run.settings.precision
    run.progress(f"export Core ML ({precision.value})")
    started = time.perf_counter()
    name = f"{run.spec.name}.mlpackage"
    example = parity_inputs(input_size, count=run.settings.batch or 1)
    details = export_coreml(run.stages.reparameterized, example, run.staging / name, precision)
    details = replace(details, package=describe_package(run.staging / name))
    run.progress(f"run {name} with the Core ML interpreter")
    images, reference = parity_batch(run.original, input_size, run.spec.mean, run.spec.std)
    row = coreml_record(run.staging / name, details, images, reference)
    return replace(row, seconds=_since(started))


@fewer_gc_passes()
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
        DeployforgeError: unreadable or mismatched weights, unwritable output, an input size the model
            does not take.
    """
    settings = settings or ExportSettings()
    input_size = input_size_for(spec, settings.input_size)
    out = Path(out)
    started = time.time()
    progress("build the multi-branch original")
    # bad weights fail before anything is created on disk
    original, conditioning = build_original(spec, weights, input_size=input_size)
    _check_writable(out)
    inputs = parity_inputs(input_size)
    reference = logits(original, inputs)
    outputs, rows = eager_stages(original, inputs, reference, progress, capture_original=settings.multibranch)

    with staged(out / spec.name) as stage:
        stage.path.mkdir()
        run = _Run(spec, settings, original, outputs, inputs, reference, stage.path, progress)
        size = SizeReport(
            params_train=torch_params(original),
            params_reparameterized=torch_params(reparameterize_structure(original)),
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
            settings=replace(settings, input_size=input_size),
            input=InputSpec(
                name=onnx_export.INPUT_NAME,
                shape=(batch_dim, 3, input_size, input_size),
                dtype="float32",
                layout="NCHW, RGB scaled to [0, 1] then normalized",
                mean=tuple(spec.mean),
                std=tuple(spec.std),
            ),
            output=OutputSpec(name=onnx_export.OUTPUT_NAME, shape=(batch_dim, "classes")),
            weights=weights_source(weights, conditioning=conditioning),
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
