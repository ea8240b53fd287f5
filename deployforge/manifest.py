"""The manifest written beside the artifacts: what was built, how, and how faithful it is.

:class:`Manifest` is the schema. It is written as JSON and read back into the identical object; a manifest
of another schema version is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from .errors import DeployforgeError
from .measure import SizeReport
from .options import ExportSettings
from .photos import Photo
from .report import ConditioningReport, StageRecord
from .staging import staged

MANIFEST = "manifest.json"
# 1: the unversioned dict of deployforge 0.1.0 (no ``schema`` field); 2: this dataclass without golden vectors;
# 3: with reference.npz (golden vectors), the class count and the model's origin.
SCHEMA_VERSION = 3
_TOOLS = ("deployforge", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "onnxsim", "coremltools", "numpy")


@dataclass(frozen=True)
class InputSpec:
    """The model input.

    Attributes:
        name: input name in every artifact.
        shape: ``(batch, 3, H, W)``; the batch is a size or the name of a dynamic dimension.
        dtype: element type.
        layout: channel order and scaling the model expects.
        mean: per-channel normalization mean.
        std: per-channel normalization std.
    """

    name: str
    shape: tuple[int | str, int, int, int]
    dtype: str
    layout: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def size(self) -> int:
        """The square input side."""
        return self.shape[2]

    @property
    def fixed_batch(self) -> int | None:
        """The fixed batch size, or ``None`` for a dynamic batch."""
        return self.shape[0] if isinstance(self.shape[0], int) else None


@dataclass(frozen=True)
class OutputSpec:
    """The model output.

    Attributes:
        name: output name in every artifact.
        shape: ``(batch, classes)``.
        classes_source: where the class count comes from: ``architecture``, ``stated`` (``num_classes``), or
            ``checkpoint's KEY SHAPE`` for a fine-tuned checkpoint's classifier.
    """

    name: str
    shape: tuple[int | str, int]
    classes_source: str = "architecture"

    @property
    def classes(self) -> int:
        """The number of classes the model outputs."""
        return self.shape[1]


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights came from.

    Attributes:
        source: the checkpoint's absolute path, or how random weights were drawn.
        sha256: the checkpoint's digest, or ``None`` for seeded random weights.
        seed: the seed of the random weights (and of the stress draws).
        conditioning: how the random weights were conditioned after the stress draws
            (:func:`deployforge.condition.condition_weights`); ``None`` for a checkpoint, and in manifests
            written before conditioning existed (their random weights were not conditioned).
    """

    source: str
    sha256: str | None
    seed: int
    conditioning: ConditioningReport | None = None

    def checkpoint(self) -> Path | None:
        """The checkpoint file, checked against its digest; ``None`` for seeded random weights.

        Raises:
            DeployforgeError: the checkpoint is gone or changed since the export.
        """
        if self.sha256 is None:
            return None
        path = Path(self.source)
        if not path.is_file():
            raise DeployforgeError(f"weights file {path} used at export is gone; restore it or re-run export")
        if sha256_file(path) != self.sha256:
            raise DeployforgeError(f"weights file {path} changed since export; re-run export with it")
        return path


@dataclass(frozen=True)
class ParityInputs:
    """The batch every stage was compared on.

    Attributes:
        count: images in the batch.
        distribution: how the values were drawn, or the photos' preprocessing (``export --images``).
        seed: the generator's seed (unused with photos).
        photos: the photos used, in order, by file name and sha256 (empty for drawn inputs).
    """

    count: int
    distribution: str
    seed: int
    photos: tuple[Photo, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """Everything ``verify`` and ``bench`` need to know about one export.

    Attributes:
        schema: the manifest schema version (:data:`SCHEMA_VERSION`).
        model: registry name.
        family: model family.
        settings: how the export ran (resolved: the input size is always set).
        input: the model input.
        output: the model output.
        weights: where the weights came from.
        parity_inputs: the batch every stage was compared on.
        stages: the parity waterfall.
        size: params and MACs.
        tools: versions of the tools that shaped the artifacts.
        artifacts: file name → sha256 (of a directory: of its sorted file digests).
        seconds: wall time of the export.
        origin: where the architecture comes from: ``registry``, ``timm`` or ``module`` (a module handed to the
            Python API: it cannot be rebuilt, so only the artifacts are checked, against the golden vectors).
    """

    schema: int
    model: str
    family: str
    settings: ExportSettings
    input: InputSpec
    output: OutputSpec
    weights: WeightsSource
    parity_inputs: ParityInputs
    stages: tuple[StageRecord, ...]
    size: SizeReport
    tools: dict[str, str]
    artifacts: dict[str, str]
    seconds: float
    origin: str = "registry"

    def write(self, directory: Path) -> Path:
        """Write the manifest as ``directory/manifest.json`` (atomically) and return its path."""
        final = Path(directory) / MANIFEST
        with staged(final) as stage:
            stage.path.write_text(json.dumps(_ADAPTER.dump_python(self, mode="json"), indent=2) + "\n")
            stage.commit()
        return final


_ADAPTER = TypeAdapter(Manifest)


def read_manifest(directory: Path) -> Manifest:
    """Read ``manifest.json`` from ``directory``.

    Raises:
        DeployforgeError: no manifest, not JSON, another schema version, or malformed.
    """
    path = Path(directory) / MANIFEST
    rerun = "re-run `deployforge export`"
    if not path.is_file():
        raise DeployforgeError(f"no {MANIFEST} in {directory}; export the model there first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DeployforgeError(f"{path} is not valid JSON ({error.msg}); {rerun}") from None
    schema = raw.get("schema", 1) if isinstance(raw, dict) else None
    if schema != SCHEMA_VERSION:
        raise DeployforgeError(
            f"{path} has manifest schema {schema!r}; this deployforge reads schema {SCHEMA_VERSION}: {rerun}"
        )
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise DeployforgeError(f"{path} is malformed ({where}: {first['msg']}); {rerun}") from None
    except DeployforgeError as error:  # a record's own check (an opset out of range) names a setting, not a file
        raise DeployforgeError(f"{path} is malformed ({error}); {rerun}") from None


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped the artifacts."""
    versions = {"python": platform.python_version()}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_digest(path: Path) -> str:
    """sha256 of a file, or of a directory (``.mlpackage``) as the digest of its sorted file digests."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()
