"""The typed records a run produces: one waterfall row per stage or artifact, and the whole report.

Each row carries the parity of its stage against the multi-branch original and a small record of what the
stage did. The same records are rendered by the CLI, written into the manifest and read back by ``verify``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from .audit import GraphAudit
from .options import Capture, Precision
from .parity import Parity
from .targets.protocol import ArtifactDescription

if TYPE_CHECKING:
    from .manifest import Manifest


@dataclass(frozen=True)
class ConditioningReport:
    """What :func:`condition_weights` did to a model (recorded in the manifest as it is).

    Attributes:
        description: one line for people.
        batchnorms: BatchNorms whose running statistics were re-estimated (0: the model was left unchanged).
        batch: images in the calibration batch.
        input_size: side of the calibration images.
        seed: seed of the calibration images.
        gates: squeeze-excite gates whose logits were narrowed to ``deployforge.condition.GATE_SPREAD``.
        low_pass: weight of the mean component added to every spatial kernel (``deployforge.condition.LOW_PASS``).
        kernels: convolutions whose spatial kernels were given that mean component.
    """

    description: str
    batchnorms: int
    batch: int
    input_size: int
    seed: int
    gates: int = 0
    low_pass: float = 0.0
    kernels: int = 0

    @property
    def changed(self) -> bool:
        """Whether any statistic was re-estimated."""
        return self.batchnorms > 0


@dataclass(frozen=True)
class FuseDetails:
    """What the fuse stage folded.

    Attributes:
        bns_folded: BatchNorms folded into the conv/linear that alone feeds them.
        bns_left_for_merge: BatchNorms left for the reparameterize stage (branch BNs, shared producers).
    """

    bns_folded: int
    bns_left_for_merge: int
    kind: Literal["fuse"] = "fuse"


@dataclass(frozen=True)
class MergeDetails:
    """What the reparameterize stage merged.

    Attributes:
        branches_merged: parallel branches merged into single convs.
        layer_scales_folded: layer scales folded into the projection that feeds them.
        norms_folded: BatchNorms folded forward into the linear layer that reads them.
        tables_gathered: learned tables gathered into constants (EfficientFormer's attention bias).
        foreign_merged: modules from outside deployforge's blocks put in inference form through timm's conventions
            (``reparameterize()``, ``fuse()``, ``switch_to_deploy()``).
        bns_folded_after: BatchNorms the fuse stage left to those modules that their merge did not absorb,
            folded into their conv or linear layer after it.
    """

    branches_merged: int
    layer_scales_folded: int
    norms_folded: int
    tables_gathered: int = 0
    foreign_merged: int = 0
    bns_folded_after: int = 0
    kind: Literal["reparameterize"] = "reparameterize"


@dataclass(frozen=True)
class CaptureDetails:
    """How the trace stage captured the graph.

    Attributes:
        capture: the method used.
        fallback_reason: why ``torch.export`` was not used, if it was not.
    """

    capture: Capture
    fallback_reason: str | None = None
    kind: Literal["trace"] = "trace"


@dataclass(frozen=True)
class OnnxDetails:
    """An ONNX artifact.

    Attributes:
        opset: ONNX opset of the graph (``None`` when only run, not written, by this row).
        ir_version: ONNX IR version.
        simplify: what onnxsim did.
        runtime_graph: what onnxruntime made of the deployed graph (fused ops, layout reorders, unfused
            chains), for the row that wrote it.
    """

    opset: int | None = None
    ir_version: int | None = None
    simplify: str | None = None
    runtime_graph: GraphAudit | None = None
    kind: Literal["onnx"] = "onnx"


@dataclass(frozen=True)
class PackageSpec:
    """What an ``.mlpackage``'s spec declares (read without running it).

    Attributes:
        inputs: input name → shape.
        outputs: output name → shape (empty when the spec leaves it open).
        spec_version: Core ML specification version.
        model_type: the spec's model type (``mlProgram``).
    """

    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    spec_version: int
    model_type: str


@dataclass(frozen=True)
class CoreMLDetails:
    """A Core ML package.

    Attributes:
        capture: how the model was captured for the converter.
        fallback_reason: why ``torch.export`` was not used, if it was not.
        precision: compute precision.
        deployment_target: minimum OS the package targets.
        input_shape: the fixed input shape the package accepts.
        package: the package's spec as read back, if it could be read.
        numerics: what was checked of its numbers.
    """

    capture: Capture
    fallback_reason: str | None
    precision: Precision
    deployment_target: str
    input_shape: tuple[int, ...]
    package: PackageSpec | None = None
    numerics: str = "not run here: Core ML predicts only on macOS"
    kind: Literal["coreml"] = "coreml"


@dataclass(frozen=True)
class OriginalDetails:
    """The original, rebuilt by ``verify``, against the outputs it had at export (the golden vectors).

    Attributes:
        golden: the file holding the export's inputs and outputs.
        weights: where the rebuilt original's weights came from.
    """

    golden: str
    weights: str
    kind: Literal["original"] = "original"


@dataclass(frozen=True)
class RuntimeDetails:
    """An artifact of a target registered in :mod:`deployforge.targets` beyond ONNX and Core ML.

    Attributes:
        target: the target that wrote it (``executorch``).
        runtime: the runtime that ran it (``executorch``), and its version.
        input_shape: the fixed input shape the artifact takes.
        facts: what the conversion reported (ops delegated, storage precision).
        artifact: the artifact as read back from disk.
        rewrites: the exact graph rewrites applied before conversion.
    """

    target: str
    runtime: str
    input_shape: tuple[int, ...]
    facts: dict[str, str] = field(default_factory=dict)
    artifact: ArtifactDescription | None = None
    rewrites: tuple[str, ...] = ()
    kind: Literal["runtime"] = "runtime"


StageDetails = Annotated[
    FuseDetails | MergeDetails | CaptureDetails | OnnxDetails | CoreMLDetails | OriginalDetails | RuntimeDetails,
    Field(discriminator="kind"),
]


@dataclass(frozen=True)
class StageRecord:
    """One row of the parity waterfall.

    Attributes:
        stage: stage name (``fuse``, ``reparameterize``, ``trace``, ``onnx``, ``onnx-multibranch``, ...).
        parity: agreement with the original, or ``None`` where numerics cannot be run here.
        details: what the stage did.
        file: the artifact this row ran, when it ran one.
        error: why the row failed outside its numbers (an unreadable artifact, a wrong spec).
        seconds: wall time of the stage, its parity run included (0.0 where nothing timed the row).
    """

    stage: str
    parity: Parity | None
    details: StageDetails
    file: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the row is within tolerance (or has no numbers) and has no error."""
        return self.error is None and (self.parity is None or self.parity.ok)

    def breach(self) -> str | None:
        """The row's failure as one line, or ``None``."""
        if self.error is not None:
            return f"{self.file or self.stage}: {self.error}"
        if self.parity is not None and not self.parity.ok:
            where = f" ({self.file})" if self.file else ""
            return f"{self.stage}: {self.parity.failure() or 'parity failed'}{where}"
        return None


def breaches_of(rows: list[StageRecord]) -> list[str]:
    """Every failing row, in pipeline order."""
    return [b for b in (row.breach() for row in rows) if b is not None]


@dataclass
class Report:
    """Result of an export or a verification.

    Attributes:
        model: registry name.
        stages: the parity waterfall, in pipeline order.
        breaches: one line per failure (stage over tolerance, altered artifact, bad spec).
        manifest: the manifest written (export) or read back (verify).
        directory: where the artifacts are (``None`` when an export wrote nothing).
        notes: what a verification could not do here, and why (stages not re-proved without torch).
    """

    model: str
    stages: list[StageRecord]
    breaches: list[str]
    manifest: Manifest | None = None
    directory: Path | None = field(default=None)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing breached."""
        return not self.breaches


@dataclass
class Verification:
    """Result of verifying one or more exports.

    Attributes:
        reports: one per export directory, in the order asked for.
    """

    reports: list[Report]

    @property
    def ok(self) -> bool:
        """True when every export verified."""
        return all(report.ok for report in self.reports)

    @property
    def failed(self) -> list[str]:
        """The models that did not verify."""
        return [report.model for report in self.reports if not report.ok]
