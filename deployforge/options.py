"""Every choice and numeric range of the pipeline, defined once; the CLI only maps them to flags.

Nothing here imports torch, onnx or coremltools: the CLI reads these before any heavy import.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidSetting

DEFAULT_OPSET = 18
# The torch exporter writes opsets 17–25; asked for another one, it silently writes opset 18 instead.
MIN_OPSET, MAX_OPSET = 17, 25
MAX_BATCH = 1024  # upper bound of the dynamic batch dimension
# Five stride-2 stages take a 32 px input down to 1×1; below that the feature maps vanish.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 2048
MAX_CLASSES = 100_000  # classifier outputs; more is a mistake (a shape mixed up), not a model
# Upper bounds of the timing protocol: beyond these a run is a mistake, not a measurement.
MAX_THREADS, MAX_RUNS, MAX_SECONDS = 256, 100_000, 3600.0
# The FP32 GEMM peak is timed on one square MatMul of this side (docs/design.md, "Latency protocol").
PEAK_GEMM_SIZE, MIN_PEAK_GEMM_SIZE, MAX_PEAK_GEMM_SIZE = 1024, 64, 8192
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")


class Target(str, enum.Enum):
    """The targets every install has, and ``all`` (all registered ones: :data:`deployforge.targets.REGISTERED`)."""

    ONNX = "onnx"
    COREML = "coreml"
    ALL = "all"


ALL_MEANS = (Target.ONNX.value, Target.COREML.value)  # `--to all`: the two formats every install writes


def target_names() -> tuple[str, ...]:
    """The registered targets' names (:data:`deployforge.targets.REGISTERED`), in registration order."""
    from .targets import REGISTERED

    return tuple(REGISTERED)


def parse_targets(value: str | Target | Iterable[str]) -> tuple[str, ...]:
    """The targets named by ``value``: one name, ``all`` (ONNX and Core ML) or a comma-separated list.

    Returns:
        The names in the order given, each once.

    Raises:
        InvalidSetting: an unknown or empty name.
    """
    text = value.value if isinstance(value, Target) else value
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p).strip() for p in text]
    known = [*target_names(), Target.ALL.value]
    found: list[str] = []
    for part in parts:
        part = part.value if isinstance(part, Target) else part
        if part not in known:
            choices = ", ".join(known)
            raise InvalidSetting(
                "target", f"unknown export target '{part}'; choose from {choices}, or a comma-separated list"
            )
        for name in ALL_MEANS if part == Target.ALL.value else (part,):
            if name not in found:
                found.append(name)
    return tuple(found)


class Precision(str, enum.Enum):
    """Core ML compute precision (inputs and outputs stay float32)."""

    FP16 = "fp16"
    FP32 = "fp32"


class Capture(str, enum.Enum):
    """How a model was captured as a graph."""

    TORCH_EXPORT = "torch.export"
    JIT_TRACE = "torch.jit.trace"


class Baseline(str, enum.Enum):
    """The graph one bench row times our deployed ONNX against."""

    MULTI_BRANCH = "multi-branch"  # our multi-branch original, exported with the deployed graph
    TIMM = "timm"  # timm's reparameterized model through timm's own onnx_export (TorchScript, its default)
    TIMM_DYNAMO = "timm-dynamo"  # the same through the torch.export-based (dynamo) exporter


class Against(str, enum.Enum):
    """What ``bench`` times our deployed ONNX against."""

    MULTI_BRANCH = "multi-branch"
    TIMM = "timm"

    @property
    def baselines(self) -> tuple[Baseline, ...]:
        """The baselines timed with ours in one interleaved run (timm: its two exports and ours multi-branch)."""
        if self is Against.TIMM:
            return (Baseline.TIMM, Baseline.TIMM_DYNAMO, Baseline.MULTI_BRANCH)
        return (Baseline.MULTI_BRANCH,)


def choose(kind: type[enum.Enum], value: str | enum.Enum, setting: str, what: str) -> enum.Enum:
    """Return the member of ``kind`` named by ``value``.

    Args:
        kind: the enum.
        value: a member or its value.
        setting: the setting's domain name, for the error.
        what: how the error names the setting (``export target``).

    Raises:
        InvalidSetting: ``value`` is not one of the members.
    """
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in kind)
        raise InvalidSetting(setting, f"unknown {what} '{value}'; choose one of {choices}") from None


def check_range(value: float, low: float, high: float, setting: str, what: str, whole: bool = True) -> None:
    """Check ``low <= value <= high``, that ``value`` is finite, and whole when ``whole``.

    Raises:
        InvalidSetting: outside the range, not a finite number, or not whole.
    """
    kind = "a whole number" if whole else "a number"
    is_number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or (whole and value != int(value)) or not low <= value <= high:
        raise InvalidSetting(setting, f"{what} must be {kind} at least {low:g} and at most {high:g}; got {value!r}")


def parse_batch(text: str) -> int | None:
    """``dynamic`` → ``None``; a whole number → itself (range-checked by :class:`ExportSettings`).

    Raises:
        InvalidSetting: anything else.
    """
    if text == "dynamic":
        return None
    if _WHOLE_NUMBER.fullmatch(text.strip()):
        return int(text)
    raise InvalidSetting("batch", f"batch size must be a whole number or 'dynamic'; got '{text}'")


def parse_counts(text: str, setting: str, what: str) -> list[int]:
    """Parse a comma-separated list of whole numbers (``4`` or ``1,2``); the records check their ranges.

    Raises:
        InvalidSetting: an empty or non-numeric entry.
    """
    parts = [part.strip() for part in text.split(",")]
    if not all(_WHOLE_NUMBER.fullmatch(part) for part in parts):
        raise InvalidSetting(setting, f"{what} expects whole numbers like 4 or 1,2; got '{text}'")
    return [int(part) for part in parts]


def parse_names(text: str, setting: str) -> list[str]:
    """Parse a comma-separated list of names (``onnxruntime,executorch``); the caller checks each name.

    Raises:
        InvalidSetting: an empty entry.
    """
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise InvalidSetting(setting, f"{setting} expects comma-separated names like onnxruntime,ncnn; got '{text}'")
    return parts


@dataclass(frozen=True)
class ExportSettings:
    """How ``export`` runs; every field is checked when the record is made.

    Attributes:
        target: the artifacts to write: a target name, ``all`` (ONNX and Core ML), or a comma-separated list
            (``onnx,executorch``); stored as the comma-separated names it means.
        precision: Core ML compute precision.
        opset: ONNX opset.
        batch: a fixed batch size, or ``None`` for a dynamic batch (Core ML then uses batch 1).
        input_size: square input side, or ``None`` for the variant's published size.
        multibranch: also export the multi-branch original to ONNX (``MODEL.multibranch.onnx``), the baseline
            ``bench`` times the deployed graph against; it is not a deployment artifact, so it is written only
            when asked for (``bench`` asks for it itself when it is missing).
        allow_partial: ExecuTorch: accept a graph XNNPACK does not delegate whole.
        rewrites: exact graph rewrites to apply for the targets that offer them (``Target.rewrites``).
    """

    target: str = Target.ALL.value
    precision: Precision = Precision.FP16
    opset: int = DEFAULT_OPSET
    batch: int | None = None
    input_size: int | None = None
    multibranch: bool = False
    allow_partial: bool = False
    rewrites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rewrites", tuple(self.rewrites))
        object.__setattr__(self, "target", ",".join(parse_targets(self.target)))
        object.__setattr__(self, "precision", choose(Precision, self.precision, "precision", "Core ML precision"))
        check_range(self.opset, MIN_OPSET, MAX_OPSET, "opset", "ONNX opset")
        if self.batch is not None:
            check_range(self.batch, 1, MAX_BATCH, "batch", "batch size")
        if self.input_size is not None:
            check_range(self.input_size, MIN_INPUT_SIZE, MAX_INPUT_SIZE, "input_size", "input size")
        if self.multibranch and not self.writes_onnx:
            raise InvalidSetting(
                "multibranch",
                f"the multi-branch ONNX needs an ONNX target, and {self.target!r} writes no ONNX; "
                "use --to onnx or --to all with it",
            )

    @property
    def targets(self) -> tuple[str, ...]:
        """The target names this export writes, in order."""
        return tuple(self.target.split(","))

    @property
    def writes_onnx(self) -> bool:
        """Whether the ONNX artifacts are written."""
        return Target.ONNX.value in self.targets

    @property
    def writes_coreml(self) -> bool:
        """Whether the Core ML package is written."""
        return Target.COREML.value in self.targets


def names(kind: Iterable[enum.Enum]) -> str:
    """``a|b|c``: the values of an enum, for help texts."""
    return "|".join(str(m.value) for m in kind)


@dataclass(frozen=True)
class TimingProtocol:
    """How latency is measured (docs/design.md, "Latency protocol"); every field is checked when made.

    Attributes:
        threads: onnxruntime ``intra_op_num_threads``.
        runs: minimum timed runs per model (timing stops at ``MAX_RUNS_FACTOR · runs``).
        warmup_s: minimum warm-up seconds per model (after at least ``MIN_WARMUP_RUNS`` runs).
        min_time_s: minimum seconds of timing.
        batch: images per inference call.
        seed: seed of the random inputs and of the bootstrap.
    """

    threads: int = 1
    runs: int = 50
    warmup_s: float = 1.0
    min_time_s: float = 5.0
    batch: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_range(self.threads, 1, MAX_THREADS, "threads", "thread count")
        check_range(self.runs, 1, MAX_RUNS, "runs", "timed runs")
        check_range(self.warmup_s, 0, MAX_SECONDS, "warmup_s", "warm-up seconds", whole=False)
        check_range(self.min_time_s, 0, MAX_SECONDS, "min_time_s", "timing seconds", whole=False)
        check_range(self.batch, 1, MAX_BATCH, "batch", "batch size")
