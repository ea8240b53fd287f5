"""Re-prove an export: artifact hashes, every artifact against the golden vectors, the stages where possible.

Every artifact is run on its runtime (onnxruntime, the Core ML interpreter, ExecuTorch, LiteRT, ncnn) on the inputs
stored at export (``reference.npz``) and compared with the original's outputs stored beside them: this needs numpy
and the runtimes only, so an export can be verified on the machine it is deployed to. Where the original can be
rebuilt (torch is installed, the model is a registered or timm one, its checkpoint is still at hand), it is rebuilt,
checked against the stored outputs, and every stage (fuse, reparameterize, trace) is run again, as at export.
Nothing here imports torch until that rebuild.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .artifact_parity import coreml_record, fit_batch, onnx_record, runtime_record
from .errors import DeployforgeError
from .gc_tuning import fewer_gc_passes
from .golden import GOLDEN, Golden, read_golden
from .manifest import Manifest, artifact_digest, read_manifest
from .parity import TOLERANCES, compare
from .report import CoreMLDetails, OnnxDetails, OriginalDetails, Report, RuntimeDetails, StageRecord, breaches_of

if TYPE_CHECKING:
    from collections.abc import Callable

    Progress = Callable[[str], None]


def _package_problems(path: Path, manifest: Manifest) -> tuple[object, str | None]:
    from .targets.coreml import describe_package

    try:
        package = describe_package(path)
    except Exception as error:  # noqa: BLE001 - any load failure is a verification failure
        return None, f"cannot load {path.name}: {type(error).__name__}"
    problems = []
    name, out_name = manifest.input.name, manifest.output.name
    if list(package.inputs) != [name]:
        problems.append(f"inputs {list(package.inputs)} != ['{name}']")
    elif package.inputs[name][1:] != manifest.input.shape[1:]:
        problems.append(f"input shape {list(package.inputs[name])} != {list(manifest.input.shape)}")
    if list(package.outputs) != [out_name]:
        problems.append(f"outputs {list(package.outputs)} != ['{out_name}']")
    if package.model_type != "mlProgram":
        problems.append(f"model type {package.model_type} is not an ML program")
    return package, "; ".join(problems) or None


def _check_package(path: Path, manifest: Manifest, exported: StageRecord, golden: Golden) -> StageRecord:
    started = time.perf_counter()
    package, problem = _package_problems(path, manifest)
    details = replace(exported.details, package=package)
    if problem is None and golden.images is None:
        problem = f"{GOLDEN} holds no Core ML parity images; re-run `deployforge export`"
    if problem is None:
        row = coreml_record(path, details, golden.images.inputs, golden.image_outputs)
    else:
        row = StageRecord(exported.stage, None, details, path.name, problem)
    return replace(row, seconds=round(time.perf_counter() - started, 3))


def _torch_missing() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        return f"torch cannot be imported here ({error})"
    return None


def _reprove_stages(manifest: Manifest, golden: Golden, progress: Progress) -> list[StageRecord]:
    """Rebuild the original, check it against the golden outputs, and run every eager stage again.

    Raises:
        DeployforgeError: the original cannot be rebuilt (a module handed to the API, a checkpoint gone or
            changed, an unknown model, another conditioning).
    """
    import torch

    from .pipeline import eager_stages, logits, rebuild_original
    from .registry import rebuildable_spec

    spec = rebuildable_spec(manifest.model, manifest.origin, manifest.output.classes)
    started = time.perf_counter()
    original = rebuild_original(spec, manifest.weights)
    inputs = torch.from_numpy(golden.batch.inputs)
    reference = logits(original, inputs)
    rebuilt = StageRecord(
        "original",
        compare(reference, golden.outputs, TOLERANCES.eager),
        OriginalDetails(golden=GOLDEN, weights=manifest.weights.source),
        seconds=round(time.perf_counter() - started, 3),
    )
    _, rows = eager_stages(original, inputs, reference, progress, name=spec.name)
    return [rebuilt, *rows]


@fewer_gc_passes()
def verify_directory(directory: Path, progress: Progress = lambda _: None) -> Report:
    """Verify one model directory written by ``export``.

    Args:
        directory: ``OUT/MODEL`` with ``manifest.json`` and ``reference.npz``.
        progress: called as each check starts.

    Returns:
        The report; ``breaches`` lists every altered artifact and every row over tolerance; ``notes`` says why the
        stages were not re-proved, when they were not.

    Raises:
        DeployforgeError: no manifest, or a manifest of another schema.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    model = manifest.model
    breaches, hashing = [], {}
    progress(f"{model}: hash artifacts")
    for name, digest in manifest.artifacts.items():
        path = directory / name
        started = time.perf_counter()
        if not path.exists():
            breaches.append(f"{name}: missing")
        elif artifact_digest(path) != digest:
            breaches.append(f"{name}: sha256 differs from the manifest (the file changed after export)")
        hashing[name] = time.perf_counter() - started
    try:
        golden = read_golden(directory, manifest.input.mean, manifest.input.std)
    except DeployforgeError as error:  # nothing can be compared: the verification fails, naming the file
        return Report(model, [], [*breaches, f"{GOLDEN}: {error}"], manifest, directory)

    rows: list[StageRecord] = []
    notes: list[str] = []
    why_not = _torch_missing()
    if why_not is None:
        progress(f"{model}: rebuild the original and re-run the stages")
        try:
            rows = _reprove_stages(manifest, golden, progress)
        except DeployforgeError as error:
            why_not = str(error)
    if why_not is not None:
        notes.append(f"stages not re-proved: {why_not}; every artifact was checked against {GOLDEN}")

    count = manifest.input.fixed_batch
    inputs, reference = fit_batch(golden.batch.inputs, count), fit_batch(golden.outputs, count)
    for name in manifest.artifacts:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".onnx"):
            progress(f"{model}: run {name} with onnxruntime")
            stage = "onnx-multibranch" if name.endswith(".multibranch.onnx") else "onnx"
            try:
                row = onnx_record(stage, path, inputs, reference, OnnxDetails(), file=name)
            except Exception as error:  # noqa: BLE001 - an unloadable artifact is a failed verification
                breaches.append(f"{name}: onnxruntime cannot run it ({type(error).__name__})")
                continue
        elif name.endswith(".mlpackage"):
            progress(f"{model}: run {name} with the Core ML interpreter")
            exported = next((r for r in manifest.stages if r.file == name), None)
            if exported is None or not isinstance(exported.details, CoreMLDetails):
                breaches.append(f"{name}: the manifest records no Core ML stage for it")
                continue
            row = _check_package(path, manifest, exported, golden)
        else:
            exported = next((r for r in manifest.stages if r.file == name), None)
            if exported is None or not isinstance(exported.details, RuntimeDetails):
                continue  # a companion file (ncnn's weights, an operator config): its hash is its check
            progress(f"{model}: run {name} with {exported.details.runtime}")
            row = runtime_record(path, exported.details, golden.batch.inputs, golden.outputs)
        rows.append(replace(row, seconds=round(row.seconds + hashing[name], 3)))  # its hash check included
    return Report(model, rows, breaches + breaches_of(rows), manifest, directory, notes)
