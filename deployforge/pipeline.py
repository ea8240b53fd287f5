"""Run the stages in order and prove parity at each: fuse → reparameterize → trace → ONNX / Core ML.

The original multi-branch model is kept; every stage's output is compared against it on the same batch
(the parity waterfall). Artifacts are staged in a temporary directory and moved into place only when
every stage is within tolerance, so a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

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

from .artifact_parity import fit_batch, onnx_record, runtime_record
from .audit import audit_onnx
from .condition import condition_weights
from .errors import DeployforgeError, InvalidSetting, StageFailed
from .fuse import FuseReport, fuse_batchnorm
from .gc_tuning import fewer_gc_passes
from .golden import GOLDEN, Batch, Golden
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
from .options import MAX_CLASSES, Capture, ExportSettings, Target, check_range
from .parity import TOLERANCES, compare
from .photos import Preprocessing, load_photos
from .registry import DEFAULT_CLASSES, ModelSpec
from .reparam import reparameterize, reparameterize_structure
from .report import (
    CaptureDetails,
    ConditioningReport,
    FuseDetails,
    MergeDetails,
    OnnxDetails,
    Report,
    RuntimeDetails,
    StageRecord,
    breaches_of,
)
from .staging import staged
from .stress import stress_weights
from .targets import get_target
from .targets import onnx as onnx_export
from .targets.protocol import Target as ExportTarget
from .targets.protocol import TargetOptions
from .trace import Traced, trace
from .weights import checkpoint_classes, load_weights, mapped_state_dict

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
def failing_stage(name: str, model: str) -> Iterator[None]:
    """Turn any failure inside a stage into :class:`StageFailed` naming the stage (a one-line error, exit 1).

    deployforge's own errors (bad settings, a strict load) pass through as they are.
    """
    try:
        yield
    except DeployforgeError:
        raise
    except Exception as error:
        raise StageFailed(model, name, error) from error


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


def fit_classes(
    spec: ModelSpec, weights: Path | None, num_classes: int | None = None
) -> tuple[ModelSpec, str, dict[str, torch.Tensor] | None]:
    """The spec with the class count the export uses, where that count comes from, and the checkpoint read.

    A checkpoint whose classifier was trained for another number of classes (a fine-tuned model) sets the count,
    read from the classifier's shapes (:func:`deployforge.weights.checkpoint_classes`); ``num_classes`` states it
    (and must then agree with the checkpoint's). Any other mismatch is left to the strict load, which lists the keys.

    Args:
        spec: the model.
        weights: a checkpoint, or ``None`` for random weights.
        num_classes: the class count, if stated.

    Returns:
        ``(spec, source, state)``: the spec built with that count, a line saying where the count comes from
        (``architecture``, ``stated`` or ``checkpoint's KEY SHAPE``), and the checkpoint's
        key-mapped state dict (``None`` without a checkpoint).

    Raises:
        InvalidSetting: ``num_classes`` out of range or not what the checkpoint's classifier holds; an unreadable
            checkpoint.
    """
    if num_classes is not None:
        check_range(num_classes, 1, MAX_CLASSES, "num_classes", "class count")
    stated = "stated"
    if weights is None or spec.origin == "module":
        if num_classes is None or spec.origin == "module":
            return spec, "architecture", None
        return replace(spec, num_classes=num_classes), stated, None
    state = mapped_state_dict(spec, Path(weights))
    found = checkpoint_classes(spec, state)
    if found is None:
        fitted = spec if num_classes is None else replace(spec, num_classes=num_classes)
        return fitted, "architecture" if num_classes is None else stated, state
    count, evidence = found
    if num_classes is not None and num_classes != count:
        raise InvalidSetting(
            "num_classes",
            f"the checkpoint's classifier has {count} classes ({evidence}), not {num_classes}; "
            f"drop the class count or set it to {count}",
        )
    source = "architecture" if count == DEFAULT_CLASSES else f"checkpoint's {evidence}"
    return replace(spec, num_classes=count), source, state


def build_original(
    spec: ModelSpec,
    weights: Path | None,
    seed: int = DEFAULT_SEED,
    condition: bool = True,
    input_size: int | None = None,
    state: dict[str, torch.Tensor] | None = None,
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
        state: the checkpoint's key-mapped state dict, when already read (:func:`fit_classes`).

    Returns:
        The model in eval mode, and what conditioning did (``None`` if nothing was conditioned). A module handed
        to the Python API (``spec.origin == "module"``) is copied with its own weights, neither stressed nor
        conditioned.
    """
    torch.manual_seed(seed)
    model = spec.build()
    conditioning = None
    if spec.origin == "module":
        pass
    elif weights is not None:
        load_weights(model, spec, Path(weights), state)
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


OWN_WEIGHTS = WeightsSource("the module's own weights, as handed to deployforge.export", None, DEFAULT_SEED)


def parity_inputs(input_size: int, count: int = PARITY_BATCH, seed: int = PARITY_SEED) -> torch.Tensor:
    """A reproducible batch of normalized-image-like inputs ``N(0, 1)`` of shape ``(count, 3, H, H)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, input_size, input_size, generator=generator)


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
    name: str = "model",
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
        name: the model's name, for the error when a stage fails.

    Returns:
        The stage outputs and their waterfall rows, each timed (the fuse row includes the capture).
    """
    probe, tolerance = inputs[:2], TOLERANCES.eager
    progress("fuse BatchNorm")
    started = time.perf_counter()
    with failing_stage("fuse", name):
        original_traced = trace(original, probe) if capture_original else None
        program = (
            original_traced.program if original_traced and original_traced.capture is Capture.TORCH_EXPORT else None
        )
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
    with failing_stage("reparameterize", name):
        merged, count = reparameterize(fused)
        late_folds = 0
        if count.foreign:  # BatchNorms left to self-merging modules that their merge did not absorb
            merged, late = fuse_batchnorm(merged, probe)
            late_folds = len(late.folded)
    rows.append(
        StageRecord(
            "reparameterize",
            compare(logits(merged, inputs), reference, tolerance),
            MergeDetails(
                branches_merged=count.branches,
                layer_scales_folded=count.layer_scales,
                norms_folded=count.norms,
                tables_gathered=count.tables,
                foreign_merged=count.foreign,
                bns_folded_after=late_folds,
            ),
            seconds=_since(started),
        )
    )
    progress("trace (torch.export, dynamic batch)")
    started = time.perf_counter()
    with failing_stage("trace", name):
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
    photos: Batch | None = None


def _onnx_artifacts(run: _Run) -> tuple[list[StageRecord], onnx.ModelProto, onnx.ModelProto | None]:
    spec, settings, probe = run.spec, run.settings, run.inputs[:2]
    inputs, reference = fit_batch(run.inputs.numpy(), settings.batch), fit_batch(run.reference, settings.batch)
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


def _coreml_artifact(run: _Run, input_size: int) -> tuple[StageRecord, Batch, np.ndarray]:
    """Convert, then run the package on the Core ML parity images.

    Returns:
        The package's row, and those images with the original's outputs on them (for the golden vectors).
    """
    from .artifact_parity import coreml_record, parity_batch
    from .targets.coreml import describe_package, export_coreml

    precision = run.settings.precision
    run.progress(f"export Core ML ({precision.value})")
    started = time.perf_counter()
    name = f"{run.spec.name}.mlpackage"
    example = parity_inputs(input_size, count=run.settings.batch or 1)
    details = export_coreml(run.stages.reparameterized, example, run.staging / name, precision)
    details = replace(details, package=describe_package(run.staging / name))
    run.progress(f"run {name} with the Core ML interpreter")
    if run.photos is not None:  # the photos are the parity images: no drawn ones to select from
        images, reference = run.photos, run.reference
    else:
        images, reference = parity_batch(run.original, input_size, run.spec.mean, run.spec.std)
    row = coreml_record(run.staging / name, details, images.inputs, reference)
    return replace(row, seconds=_since(started)), images, reference


BUILT_IN = (Target.ONNX.value, Target.COREML.value)  # written by the steps above; the others by their protocol


def runtime_version(target: ExportTarget) -> str:
    """``RUNTIME VERSION`` of the package that runs ``target``'s artifacts (its ``package``)."""
    from importlib import metadata

    try:
        return f"{target.runtime} {metadata.version(target.package)}"
    except metadata.PackageNotFoundError:
        return target.runtime


def check_targets(settings: ExportSettings) -> list[ExportTarget]:
    """The targets ``settings`` asks for, each with its runtime installed, before anything is built.

    Raises:
        MissingExtra: a target's runtime is not installed (the message names the extra).
        InvalidSetting: a rewrite that none of the targets offers.
    """
    targets = [get_target(name) for name in settings.targets]
    for target in targets:
        target.require()
    offered = {rewrite for target in targets for rewrite in target.rewrites}
    for rewrite in settings.rewrites:
        if rewrite not in offered:
            choices = ", ".join(sorted(offered)) or "none"
            raise InvalidSetting(
                "rewrites",
                f"no target of this export offers the rewrite '{rewrite}' (offered: {choices}); drop it or add "
                "the target that offers it",
            )
    return targets


def _runtime_artifact(run: _Run, target: ExportTarget, input_size: int) -> StageRecord:
    """Export through ``target``'s protocol at batch 1, then run the artifact on its runtime on the parity batch."""
    settings = run.settings
    rewrites = tuple(r for r in settings.rewrites if r in target.rewrites)
    options = TargetOptions(settings.allow_partial, rewrites, settings.precision, settings.opset)
    run.progress(f"export {target.name}" + (f" (rewrites: {', '.join(rewrites)})" if rewrites else ""))
    started = time.perf_counter()
    example = parity_inputs(input_size, count=1)
    facts = target.export(run.stages.reparameterized, example, run.staging, run.spec.name, options)
    primary = run.staging / target.files(run.spec.name)[0]
    details = RuntimeDetails(
        target.name, runtime_version(target), tuple(example.shape), facts, target.describe(primary), rewrites
    )
    run.progress(f"run {primary.name} with {target.runtime}")
    row = runtime_record(primary, details, run.inputs.numpy(), run.reference)
    return replace(row, seconds=_since(started))


@fewer_gc_passes()
def export(
    spec: ModelSpec,
    settings: ExportSettings | None = None,
    out: Path = Path("deployforge-out"),
    weights: Path | None = None,
    progress: Progress = _noop,
    num_classes: int | None = None,
    images: Path | None = None,
) -> Report:
    """Run the whole pipeline for ``spec`` and write ``OUT/MODEL/`` (artifacts + manifest.json).

    Args:
        spec: the model (a registered variant, a timm model, or a module handed to the Python API).
        settings: target, precision, opset, batch and input size (default: ``ExportSettings()``).
        out: output root; the model's directory is replaced as a whole on success.
        weights: a checkpoint to load strictly, or ``None`` for seeded random weights. A checkpoint whose
            classifier has another class count (a fine-tuned model) sets the count (:func:`fit_classes`).
        progress: called with a short description as each stage starts.
        num_classes: the class count, when stated (it must agree with the checkpoint's).
        images: a folder of photos to use as the parity inputs of every stage and artifact, instead of drawn ones
            (:mod:`deployforge.photos`); unusable files are listed in ``report.notes``.

    Returns:
        The report; ``report.ok`` is False (and nothing is written) if any stage breached tolerance.

    Raises:
        DeployforgeError: unreadable or mismatched weights, unwritable output, an input size the model
            does not take.
    """
    settings = settings or ExportSettings()
    input_size = input_size_for(spec, settings.input_size)
    targets = check_targets(settings)  # a missing runtime fails before anything is built
    out = Path(out)
    started = time.time()
    photos, notes = (), []
    if images is not None:  # unusable photos fail before anything is built
        progress(f"read the photos in {images}")
        preprocessing = Preprocessing.for_size(input_size)
        pixels, photos, notes = load_photos(images, preprocessing)
        batch = Batch.of_pixels(pixels, spec.mean, spec.std)
        distribution = f"photos from {Path(images).resolve()}: {preprocessing.describe()}, normalized"
    else:
        batch, distribution = Batch(parity_inputs(input_size).numpy()), PARITY_DISTRIBUTION
    progress("build the multi-branch original")
    # bad weights fail before anything is created on disk
    with failing_stage("build", spec.name):
        spec, classes_source, state = fit_classes(spec, weights, num_classes)
        original, conditioning = build_original(spec, weights, input_size=input_size, state=state)
        inputs = torch.from_numpy(batch.inputs)
        reference = logits(original, inputs)
    _check_writable(out)
    outputs, rows = eager_stages(original, inputs, reference, progress, settings.multibranch, spec.name)

    with staged(out / spec.name) as stage:
        stage.path.mkdir()
        photo_batch = batch if photos else None
        run = _Run(spec, settings, original, outputs, inputs, reference, stage.path, progress, photo_batch)
        size = SizeReport(
            params_train=torch_params(original),
            params_reparameterized=torch_params(reparameterize_structure(original)),
            params_deployed_torch=torch_params(outputs.reparameterized),
            macs_torch=torch_macs(outputs.reparameterized, inputs[:1]),
            reference_params_m=spec.reference.params_m if spec.reference else None,
            reference_gmacs=spec.reference.gmacs if spec.reference else None,
        )
        golden = Golden(batch, reference)
        if settings.writes_onnx:
            with failing_stage("onnx", spec.name):
                onnx_rows, deployed, multi_branch = _onnx_artifacts(run)
            rows += onnx_rows
            size = size.with_onnx(deployed, multi_branch)
        if settings.writes_coreml:
            with failing_stage("coreml", spec.name):
                row, images, image_outputs = _coreml_artifact(run, input_size)
            rows.append(row)
            golden = replace(golden, images=images, image_outputs=image_outputs)
        for target in targets:
            if target.name not in BUILT_IN:
                with failing_stage(target.name, spec.name):
                    rows.append(_runtime_artifact(run, target, input_size))
        golden.write(stage.path / GOLDEN)
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
            output=OutputSpec(onnx_export.OUTPUT_NAME, (batch_dim, int(reference.shape[1])), classes_source),
            weights=weights_source(weights, conditioning=conditioning) if spec.origin != "module" else OWN_WEIGHTS,
            parity_inputs=ParityInputs(len(batch), distribution, PARITY_SEED, tuple(photos)),
            stages=tuple(rows),
            size=size,
            tools=tool_versions(),
            artifacts={p.name: artifact_digest(p) for p in sorted(stage.path.iterdir())},
            seconds=round(time.time() - started, 1),
            origin=spec.origin,
        )
        report = Report(spec.name, rows, breaches_of(rows), manifest, notes=list(notes))
        if report.ok:
            manifest.write(stage.path)
            stage.commit()
            report.directory = out / spec.name
        return report
