"""The Python API: ``export``, ``verify``, ``locate`` and ``bench``, each returning the typed report the CLI renders.

The command line is a shell over these functions: it parses flags, calls one of them, and renders what it returns.
Nothing here prints; progress and notes reach the caller through optional callbacks. Heavy libraries load on the
first call, not on import.

    import deployforge

    report = deployforge.export("fastvit_t8", to="onnx")
    assert report.ok, report.breaches
    assert deployforge.verify(report.directory).ok
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DeployforgeError, InvalidSetting
from .options import (
    DEFAULT_OPSET,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    Against,
    ExportSettings,
    Precision,
    Target,
    TimingProtocol,
    choose,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .benchmark import BenchReport
    from .locate import LocateReport
    from .registry import ModelSpec
    from .report import Report, Verification
    from .runtime_bench import RuntimeBenchReport

Progress = Callable[[str], None]
DEFAULT_OUT = Path("deployforge-out")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _quiet(_: str) -> None:
    pass


def module_spec(
    module: nn.Module,
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    name: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ModelSpec:
    """Describe a module handed to the API as the pipeline's model record.

    The module is exported with its own weights (copied, never changed): neither stressed nor conditioned.

    Args:
        module: a classifier taking ``(N, 3, H, H)`` images and returning ``(N, classes)`` logits.
        input_shape: the input shape ``(N, 3, H, H)`` (one of ``input_shape`` and ``example_input``).
        example_input: an example input; its shape is used.
        name: the export's name (directory and file stem); default: the module's class name in snake case.
        mean: the input normalization mean the manifest records (default: ImageNet's).
        std: the input normalization std (default: ImageNet's).

    Raises:
        InvalidSetting: no shape, a shape that is not ``(N, 3, H, H)`` with ``H`` in range, a bad name, or a
            module whose output is not one ``(N, classes)`` tensor.
    """
    import torch

    from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

    if (input_shape is None) == (example_input is None):
        raise InvalidSetting("input_shape", "a module needs its input: pass input_shape=(1, 3, H, H) or example_input")
    shape = tuple(example_input.shape) if example_input is not None else tuple(input_shape)
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise InvalidSetting(
            "input_shape", f"deployforge exports image models with inputs (N, 3, H, H); got {shape}: pass such a shape"
        )
    side = int(shape[2])
    if not MIN_INPUT_SIZE <= side <= MAX_INPUT_SIZE:
        raise InvalidSetting("input_shape", f"input side {side} is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}")
    name = name or re.sub(r"(?<!^)(?=[A-Z])", "_", type(module).__name__).lower()
    if not _NAME.fullmatch(name):
        raise InvalidSetting("name", f"'{name}' cannot name a directory; use letters, digits, '_', '.' and '-'")
    with torch.no_grad():
        output = copy.deepcopy(module).eval()(torch.zeros(1, 3, side, side))
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise DeployforgeError(f"{name} returns {got}; deployforge exports classifiers with one (N, classes) output")
    return ModelSpec(
        name=name,
        family="module",
        config=module,
        builder=_copy_module,
        input_size=side,
        reference=None,
        timm_name=None,
        mean=tuple(mean or IMAGENET_MEAN),
        std=tuple(std or IMAGENET_STD),
        fixed_input_size=True,
        num_classes=int(output.shape[1]),
        origin="module",
    )


def _copy_module(module: nn.Module, num_classes: int | None = None) -> nn.Module:
    return copy.deepcopy(module)


def resolve_model(model: str | ModelSpec | nn.Module, **module_options: object) -> ModelSpec:
    """The model record for a registry name, ``timm:NAME``, a spec, or a module.

    ``module_options`` (input shape, example input, name) go to :func:`module_spec`.

    Raises:
        DeployforgeError: an unknown name (with the closest names), or a module :func:`module_spec` refuses.
    """
    from .registry import ModelSpec, get_spec

    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        if any(value is not None for value in module_options.values()):
            given = ", ".join(k for k, v in module_options.items() if v is not None)
            raise DeployforgeError(f"{given} describe a module; a registered model ({model}) knows its input")
        from .timm_models import is_timm_name, timm_spec

        return timm_spec(model) if is_timm_name(model) else get_spec(model)
    from torch import nn

    if isinstance(model, nn.Module):
        return module_spec(model, **module_options)
    raise DeployforgeError(f"expected a model name or a torch.nn.Module, got {type(model).__name__}")


def export(
    model: str | ModelSpec | nn.Module,
    *,
    to: str | Target = Target.ALL,
    out: str | Path = DEFAULT_OUT,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    precision: str | Precision = Precision.FP16,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_size: int | None = None,
    multibranch: bool = False,
    allow_partial: bool = False,
    rewrites: Sequence[str] = (),
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    name: str | None = None,
    images: str | Path | None = None,
    progress: Progress = _quiet,
) -> Report:
    """Fuse, reparameterize, trace and export one model, proving parity at every stage; write ``OUT/NAME/``.

    Args:
        model: a registered name (``"fastvit_t8"``), a timm model (``"timm:repvit_m0_9"``, random weights
            stressed as the registry's are, or ``weights`` in timm's key names), or any ``torch.nn.Module`` with
            ``input_shape`` or ``example_input`` (exported with its own weights).
        to: a registered target (``onnx``, ``coreml``, ``executorch``, ``litert``, ``ncnn``, ``ort``), ``all``
            (ONNX and Core ML), or a comma-separated list.
        out: output root.
        weights: a checkpoint for a registered model (``.pth`` or ``.safetensors``); its classifier may have another
            class count (a fine-tuned model), read from its shapes.
        num_classes: the class count, stated (it must agree with the checkpoint's classifier).
        precision: Core ML compute precision, ``fp16`` or ``fp32``.
        opset: ONNX opset.
        batch: a fixed batch size, or ``None`` for a dynamic batch.
        input_size: square input side (default: the model's).
        multibranch: also write the multi-branch ONNX (the baseline ``bench`` times against).
        allow_partial: ExecuTorch: accept a graph XNNPACK does not delegate whole.
        rewrites: exact graph rewrites offered by the chosen targets (each target's ``rewrites``).
        input_shape: a module's input shape ``(N, 3, H, H)``.
        example_input: a module's example input (instead of ``input_shape``).
        name: a module's export name (default: its class name in snake case).
        images: a folder of photos to prove every stage and artifact on, instead of drawn inputs (resized and
            centre-cropped to the input size; unusable files are listed in ``report.notes``).
        progress: called with a short description as each stage starts.

    Returns:
        The report (``report.ok``; ``report.stages`` is the waterfall; ``report.manifest`` what was written).

    Raises:
        DeployforgeError: bad settings, weights or model; the message names the problem and the fix.
    """
    from . import pipeline

    spec = resolve_model(model, input_shape=input_shape, example_input=example_input, name=name)
    if spec.origin == "module" and weights is not None:
        raise InvalidSetting("weights", "a module is exported with its own weights; load the checkpoint into it first")
    if spec.origin == "module" and input_size not in (None, spec.input_size):
        raise InvalidSetting("input_size", f"the module's input side is {spec.input_size} (its input_shape)")
    settings = ExportSettings(to, precision, opset, batch, input_size, multibranch, allow_partial, tuple(rewrites))
    return pipeline.export(
        spec,
        settings,
        out=Path(out),
        weights=Path(weights) if weights is not None else None,
        progress=progress,
        num_classes=num_classes,
        images=Path(images) if images is not None else None,
    )


def verify(
    targets: str | Path | Sequence[str | Path] = (),
    *,
    out: str | Path = DEFAULT_OUT,
    progress: Progress = _quiet,
) -> Verification:
    """Re-prove exports: artifact hashes, the original and every stage rebuilt and re-run, every artifact run.

    Args:
        targets: export directories or model names (names are looked up under ``out``); none: every export under
            ``out``.
        out: the output root ``export`` wrote to.
        progress: called as each check starts.

    Returns:
        One report per export (``verification.ok``; ``verification.reports``).

    Raises:
        DeployforgeError: nothing to verify, a manifest of another schema, or a checkpoint that is gone.
    """
    from .report import Verification
    from .verification import verify_directory
    from .workspace import resolve_model_dirs

    names = [str(targets)] if isinstance(targets, str | Path) else [str(t) for t in targets]
    directories = resolve_model_dirs(names, Path(out))
    return Verification([verify_directory(directory, progress) for directory in directories])


def locate(target: str | Path, *, out: str | Path = DEFAULT_OUT, progress: Progress = _quiet) -> LocateReport:
    """Find, per artifact of one export, the first layer (by source module path) that departs from the original.

    Args:
        target: one export directory or model name.
        out: the output root ``export`` wrote to.
        progress: called as each search starts.

    Raises:
        DeployforgeError: ``target`` holds several exports or none, or nothing in it can be searched here.
    """
    from .locate import locate_directory
    from .workspace import resolve_model_dirs

    directories = resolve_model_dirs([str(target)], Path(out))
    if len(directories) > 1:
        names = ", ".join(d.name for d in directories)
        raise DeployforgeError(f"locate searches one export; {target} holds {len(directories)} ({names}): name one")
    report = locate_directory(directories[0], progress)
    if not report.searched and not report.departures:
        reasons = "; ".join(f"{loc.file}: {loc.unavailable}" for loc in report.locations)
        raise DeployforgeError(f"nothing in {directories[0]} can be searched layer by layer here ({reasons})")
    return report


def bench(
    targets: str | Path | Sequence[str | Path] = (),
    *,
    threads: int | Sequence[int] = 1,
    against: str | Against = Against.MULTI_BRANCH,
    protocol: TimingProtocol | None = None,
    peak: bool = False,
    runtimes: Sequence[str] = (),
    profile: bool = False,
    out: str | Path = DEFAULT_OUT,
    progress: Progress = _quiet,
    notify: Progress = _quiet,
) -> BenchReport:
    """Time our deployed ONNX against a baseline, interleaved in one process (onnxruntime, CPU).

    Args:
        targets: model names (exported to a scratch directory if not under ``out``) or export directories; none:
            every export under ``out``.
        threads: intra-op thread count(s); each is a separate timed run.
        against: ``multi-branch`` (our original, before fusion) or ``timm`` (timm's own export of the same weights;
            model names only).
        protocol: warm-up, run count and minimum time (its ``threads`` is replaced by each of ``threads``).
        peak: also measure the FP32 GEMM peak at each thread count (with no target and no export, only the peak).
        runtimes: time the artifacts of these runtimes (``onnxruntime``, ``executorch``, ``litert``, ``ncnn``)
            side by side instead, interleaved, with the ratio of each to onnxruntime (``report.runtimes``); a model
            name is exported to a scratch directory with every target they need.
        profile: with ``runtimes``, also run each runtime's own profiler where it has one (ExecuTorch's ETDump)
            and list its slow paths in ``report.runtimes.findings``.
        out: the output root ``export`` wrote to.
        progress: called as each step starts.
        notify: told, one line each, of warnings (more threads than cores) and notes (an export made in scratch).

    Returns:
        Rows per model, thread count and baseline; the peaks; every warning and note.

    Raises:
        DeployforgeError: bad settings, nothing to time, or a baseline that computes another function.
    """
    from . import benchmark
    from .benchmark import BenchReport
    from .workspace import find_model_dirs

    names = [str(targets)] if isinstance(targets, str | Path) else [str(t) for t in targets]
    counts = [threads] if isinstance(threads, int) else list(threads)
    base = protocol or TimingProtocol()
    protocols = [dataclasses.replace(base, threads=n) for n in counts]
    baseline = choose(Against, against, "against", "baseline")
    if baseline is Against.TIMM and (not names or any(Path(t).is_dir() for t in names)):
        raise InvalidSetting("against", "timm is benched on model names (its weights are drawn anew); name models")
    report = BenchReport()

    def tell(kind: str, line: str) -> None:
        (report.warnings if kind == "warning" else report.notes).append(line)
        notify(f"{kind}: {line}")

    for each in protocols:
        warning = benchmark.thread_warning(each.threads)
        if warning:
            tell("warning", warning)
    if runtimes:
        if baseline is not Against.MULTI_BRANCH or peak:
            raise InvalidSetting("runtimes", "runtimes are timed against onnxruntime alone; drop --against and --peak")
        report.runtimes = _bench_runtimes(names, list(runtimes), protocols, profile, Path(out), progress, tell)
        return report
    peak_only = peak and not names and not find_model_dirs(Path(out))
    if peak_only:
        tell("note", f"no exports under {out}; measuring the FP32 GEMM peak only")
    with tempfile.TemporaryDirectory(prefix="deployforge-bench-") as scratch:
        # every export first, then the peak, then the timings: the peak is measured in the same state
        if peak_only:
            timed = []
        elif baseline is Against.TIMM:
            timed = _timm_peers(names, Path(scratch), progress)
        else:
            timed = _export_dirs(names, Path(out), Path(scratch), progress, lambda line: tell("note", line))
        for each in protocols if peak else []:
            progress(f"measuring the FP32 GEMM peak at {each.threads} thread(s)")
            report.peaks.append(benchmark.measure_peak(each))
        report.rows = [row for time_it in timed for row in time_it(protocols, progress, report.peaks)]
    return report


def _bench_runtimes(
    names: list[str],
    runtimes: list[str],
    protocols: list[TimingProtocol],
    profile: bool,
    out: Path,
    progress: Progress,
    tell: Callable[[str, str], None],
) -> RuntimeBenchReport:
    """Every export's artifacts timed on ``runtimes``, interleaved (:mod:`deployforge.runtime_bench`)."""
    from .runtime_bench import RuntimeBenchReport, bench_runtimes, has_artifacts, profile_export, targets_for
    from .workspace import Scratch, resolve_model_dirs

    targets = targets_for(runtimes)
    for target in targets:
        target.require()
    wanted = ",".join(dict.fromkeys(["onnx", *(t.name for t in targets)]))
    with tempfile.TemporaryDirectory(prefix="deployforge-bench-") as scratch:
        needs = Scratch(Path(scratch), ExportSettings(target=wanted), has_artifacts(runtimes), f"{wanted} artifacts")
        directories = resolve_model_dirs(names, out, needs, progress, notify=lambda line: tell("note", line))
        report = RuntimeBenchReport()
        for directory in directories:
            report.rows += bench_runtimes(directory, runtimes, protocols, progress)
            if profile:
                report.findings += profile_export(directory, runtimes, progress)
    return report


def _export_dirs(names: list[str], out: Path, scratch: Path, progress: Progress, notify: Progress) -> list:
    """One timing closure per export directory (ours against its multi-branch original)."""
    import functools

    from .benchmark import bench_export
    from .workspace import Scratch, has_onnx_pair, resolve_model_dirs

    needs = Scratch(scratch, ExportSettings(target=Target.ONNX, multibranch=True), has_onnx_pair)
    directories = resolve_model_dirs(names, out, needs, progress, notify=notify)
    return [functools.partial(bench_export, directory) for directory in directories]


def _timm_peers(names: list[str], scratch: Path, progress: Progress) -> list:
    """One timing closure per model (ours against timm's two exports and our multi-branch original)."""
    import functools

    from .peers import bench_timm_peer, prepare_timm_peer
    from .registry import get_spec

    specs = [get_spec(name) for name in names]
    peers = [prepare_timm_peer(spec, scratch / spec.name, progress=progress) for spec in specs]
    return [functools.partial(bench_timm_peer, peer) for peer in peers]
