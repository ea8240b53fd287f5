"""The deployment card written beside the artifacts: what was built, how, and how faithful it is."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from .errors import DeployforgeError
from .export.atomic import staged_path
from .weights import sha256_file

MANIFEST = "manifest.json"
_TOOLS = ("deployforge", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "coremltools", "numpy")


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped the artifacts."""
    versions = {"python": platform.python_version()}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def artifact_digest(path: Path) -> str:
    """sha256 of a file, or of a directory (``.mlpackage``) as the digest of its sorted file digests."""
    if path.is_file():
        return sha256_file(path)
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def write_manifest(directory: Path, card: dict) -> Path:
    """Write ``card`` as ``manifest.json`` in ``directory`` (atomically)."""
    final = directory / MANIFEST
    with staged_path(final) as tmp:
        tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return final


def read_manifest(directory: Path) -> dict:
    """Read ``manifest.json`` from ``directory``.

    Raises:
        DeployforgeError: no manifest, or it is not valid JSON.
    """
    path = directory / MANIFEST
    if not path.is_file():
        raise DeployforgeError(f"no {MANIFEST} in {directory}; run `deployforge export MODEL --out DIR` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DeployforgeError(f"{path} is not valid JSON ({error.msg}); re-run `deployforge export`") from None
