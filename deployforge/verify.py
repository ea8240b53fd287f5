"""Re-prove an export: recompute artifact hashes, re-run the original and every stage, run the ONNX files."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import DeployforgeError
from .manifest import MANIFEST, artifact_digest, read_manifest
from .pipeline import (
    Progress,
    Report,
    StageRecord,
    breaches_of,
    build_original,
    eager_stages,
    onnx_record,
    parity_inputs,
)
from .registry import get_spec
from .weights import sha256_file


def find_model_dirs(root: Path) -> list[Path]:
    """Every directory at or directly under ``root`` that holds a manifest, sorted."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))


def _weights_of(card: dict) -> Path | None:
    source, digest = card["weights"]["source"], card["weights"]["sha256"]
    if digest is None:
        return None
    path = Path(source)
    if not path.is_file():
        raise DeployforgeError(f"weights file {path} used at export is gone; restore it or re-run export")
    if sha256_file(path) != digest:
        raise DeployforgeError(f"weights file {path} changed since export; re-run export with it")
    return path


def _check_package(path: Path, card: dict) -> StageRecord:
    from .export.coreml import describe_package

    stage = f"coreml-{card.get('precision', 'fp16')}"
    try:
        spec = describe_package(path)
    except Exception as error:  # noqa: BLE001 - any load failure is a verification failure
        return StageRecord(stage, None, {"error": f"cannot load {path.name}: {type(error).__name__}"})
    problems = []
    name, out_name = card["input"]["name"], card["output"]["name"]
    if list(spec["inputs"]) != [name]:
        problems.append(f"inputs {list(spec['inputs'])} != ['{name}']")
    elif spec["inputs"][name][1:] != card["input"]["shape"][1:]:
        problems.append(f"input shape {spec['inputs'][name]} != {card['input']['shape']}")
    if list(spec["outputs"]) != [out_name]:
        problems.append(f"outputs {list(spec['outputs'])} != ['{out_name}']")
    if spec["kind"] != "mlProgram":
        problems.append(f"model type {spec['kind']} is not an ML program")
    details = {"spec": spec, "numerics": "not run here: Core ML predicts only on macOS"}
    if problems:
        details["error"] = "; ".join(problems)
    return StageRecord(stage, None, details)


def verify_directory(directory: Path, progress: Progress = lambda _: None) -> Report:
    """Verify one model directory written by ``export``.

    Args:
        directory: ``OUT/MODEL`` with ``manifest.json``.
        progress: called as each check starts.

    Returns:
        The report; ``breaches`` lists every altered artifact and every stage over tolerance.

    Raises:
        DeployforgeError: no manifest, unknown model, or the export's weights file is gone.
    """
    directory = Path(directory)
    card = read_manifest(directory)
    spec = get_spec(card["model"])
    breaches = []
    progress(f"{spec.name}: hash artifacts")
    for name, digest in card["artifacts"].items():
        path = directory / name
        if not path.exists():
            breaches.append(f"{name}: missing")
        elif artifact_digest(path) != digest:
            breaches.append(f"{name}: sha256 differs from the manifest (the file changed after export)")
    progress(f"{spec.name}: rebuild the original and re-run the stages")
    original = build_original(spec, _weights_of(card), card.get("seed", 0))
    input_size = int(card["input"]["shape"][2])
    inputs = parity_inputs(input_size, card["parity_inputs"]["count"], card["seed"])
    with torch.no_grad():
        reference = original(inputs).numpy()
    _, rows = eager_stages(original, inputs, reference, progress)
    batch = card["input"]["shape"][0]
    count = batch if isinstance(batch, int) else None
    for name in card["artifacts"]:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".onnx"):
            progress(f"{spec.name}: run {name} with onnxruntime")
            stage = "onnx-multibranch" if name.endswith(".multibranch.onnx") else "onnx"
            try:
                rows.append(onnx_record(stage, path, inputs[:count], reference[:count], file=name))
            except Exception as error:  # noqa: BLE001 - an unloadable artifact is a failed verification
                breaches.append(f"{name}: onnxruntime cannot run it ({type(error).__name__})")
        elif name.endswith(".mlpackage"):
            progress(f"{spec.name}: load {name} spec")
            record = _check_package(path, card)
            rows.append(record)
            if "error" in record.details:
                breaches.append(f"{name}: {record.details['error']}")
    return Report(spec.name, rows, breaches + breaches_of(rows), card, directory)
