"""Re-prove an export: recompute artifact hashes, re-run the original and every stage, run every artifact."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from torch import nn

from .coreml_parity import coreml_record, parity_batch
from .manifest import Manifest, artifact_digest, read_manifest
from .pipeline import (
    Progress,
    eager_stages,
    fewer_gc_passes,
    fit_batch,
    logits,
    onnx_record,
    parity_inputs,
    rebuild_original,
)
from .registry import get_spec
from .report import CoreMLDetails, OnnxDetails, Report, StageRecord, breaches_of


def _package_problems(path: Path, manifest: Manifest) -> tuple[object, str | None]:
    from .export.coreml import describe_package

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


def _check_package(path: Path, manifest: Manifest, exported: StageRecord, original: nn.Module) -> StageRecord:
    started = time.perf_counter()
    package, problem = _package_problems(path, manifest)
    details = replace(exported.details, package=package)
    if problem is None:
        images, reference = parity_batch(original, manifest.input.size, manifest.input.mean, manifest.input.std)
        row = coreml_record(path, details, images, reference)
    else:
        row = StageRecord(exported.stage, None, details, path.name, problem)
    return replace(row, seconds=round(time.perf_counter() - started, 3))


@fewer_gc_passes()
def verify_directory(directory: Path, progress: Progress = lambda _: None) -> Report:
    """Verify one model directory written by ``export``.

    Args:
        directory: ``OUT/MODEL`` with ``manifest.json``.
        progress: called as each check starts.

    Returns:
        The report; ``breaches`` lists every altered artifact and every stage over tolerance.

    Raises:
        DeployforgeError: no manifest, another schema, unknown model, or the export's weights file is gone.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    spec = get_spec(manifest.model)
    breaches, hashing = [], {}
    progress(f"{spec.name}: hash artifacts")
    for name, digest in manifest.artifacts.items():
        path = directory / name
        started = time.perf_counter()
        if not path.exists():
            breaches.append(f"{name}: missing")
        elif artifact_digest(path) != digest:
            breaches.append(f"{name}: sha256 differs from the manifest (the file changed after export)")
        hashing[name] = time.perf_counter() - started
    progress(f"{spec.name}: rebuild the original and re-run the stages")
    original = rebuild_original(spec, manifest.weights)
    inputs = parity_inputs(manifest.input.size, manifest.parity_inputs.count, manifest.parity_inputs.seed)
    reference = logits(original, inputs)
    _, rows = eager_stages(original, inputs, reference, progress)
    count = manifest.input.fixed_batch
    for name in manifest.artifacts:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".onnx"):
            progress(f"{spec.name}: run {name} with onnxruntime")
            stage = "onnx-multibranch" if name.endswith(".multibranch.onnx") else "onnx"
            try:
                batch_inputs, batch_reference = fit_batch(inputs, count), fit_batch(reference, count)
                row = onnx_record(stage, path, batch_inputs, batch_reference, OnnxDetails(), file=name)
            except Exception as error:  # noqa: BLE001 - an unloadable artifact is a failed verification
                breaches.append(f"{name}: onnxruntime cannot run it ({type(error).__name__})")
                continue
        elif name.endswith(".mlpackage"):
            progress(f"{spec.name}: run {name} with the Core ML interpreter")
            exported = next((r for r in manifest.stages if r.file == name), None)
            if exported is None or not isinstance(exported.details, CoreMLDetails):
                breaches.append(f"{name}: the manifest records no Core ML stage for it")
                continue
            row = _check_package(path, manifest, exported, original)
        else:
            continue
        rows.append(replace(row, seconds=round(row.seconds + hashing[name], 3)))  # its hash check included
    return Report(spec.name, rows, breaches + breaches_of(rows), manifest, directory)
