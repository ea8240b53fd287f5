"""Latency of one export's artifacts on several runtimes, interleaved in one process (``bench --runtimes``).

Every runtime named gets the artifact of a registered target that it runs (``onnxruntime``: the deployed ONNX;
``executorch``: the ``.pte``; ``litert``: the ``.tflite``; ``ncnn``: the ``.ncnn.param``), opened with the same
thread count. Before any timing every artifact is run on the same input and checked against onnxruntime's output
(rel-L2 ≤ 1e-5): timing two different functions would mean nothing. Then the runtimes are warmed up and timed
round-robin, one call each in turn, under the latency protocol of :mod:`deployforge.benchmark`, so every ratio is
taken under the same machine state.

Thread pools that keep spinning after a call would steal the cores of the runtime timed next: onnxruntime's
sessions here are opened with spinning off, and ncnn's OpenMP gets ``OMP_WAIT_POLICY=PASSIVE`` (set before ncnn
loads; measured here, without it ncnn's idle threads slowed the other runtimes). XNNPACK's pthreadpool (ExecuTorch,
LiteRT) spins only briefly before it sleeps.

x86 latencies rank the runtimes on this CPU; they are not phone latencies.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .benchmark import LatencyStats, _time_interleaved, _warmup, bootstrap_ratio_of_medians, thread_warning
from .errors import DeployforgeError, InvalidSetting
from .manifest import read_manifest
from .options import TimingProtocol
from .parity import TOLERANCES, compare
from .targets import REGISTERED, get_target
from .targets.protocol import Target

DISCLAIMER = (
    "x86 latencies rank the runtimes on this CPU; they are not phone latencies (a phone's ARM cores, caches and the "
    "runtimes' ARM kernels differ)"
)
REFERENCE_RUNTIME = "onnxruntime"
Progress = Callable[[str], None]


class RuntimesDisagree(DeployforgeError):
    """An artifact computes another function than onnxruntime's ONNX: a parity failure, exit 1."""

    exit_code = 1


def runtime_names() -> tuple[str, ...]:
    """The runtimes of the registered targets, each once, in registration order."""
    return tuple(dict.fromkeys(get_target(name).runtime for name in REGISTERED))


def targets_for(runtimes: Sequence[str]) -> list[Target]:
    """The target whose artifact each runtime times (the first registered one it runs: ``onnx`` for onnxruntime).

    Raises:
        InvalidSetting: an unknown runtime, or one named twice.
    """
    known = runtime_names()
    chosen = []
    for runtime in runtimes:
        if runtime not in known:
            raise InvalidSetting("runtimes", f"unknown runtime '{runtime}'; choose from {', '.join(known)}")
        if runtime in [t.runtime for t in chosen]:
            raise InvalidSetting("runtimes", f"runtime '{runtime}' is named twice; name each once")
        chosen.append(next(get_target(n) for n in REGISTERED if get_target(n).runtime == runtime))
    return chosen


def has_artifacts(runtimes: Sequence[str]) -> Callable[[Path], bool]:
    """Whether an export directory holds the artifact every runtime in ``runtimes`` times."""
    targets = targets_for(runtimes)

    def usable(directory: Path) -> bool:
        model = read_manifest(directory).model
        return all((directory / target.files(model)[0]).exists() for target in targets)

    return usable


@dataclass
class RuntimeRow:
    """One runtime's latency on one export at one thread count.

    Attributes:
        model: the exported model.
        runtime: the runtime (``executorch``).
        file: the artifact it ran.
        stats: its latency statistics (GFLOP/s from the deployed model's MACs).
        rel_l2: its outputs against onnxruntime's on the same input, checked before timing.
        ratio: its median latency over onnxruntime's (> 1: slower than onnxruntime), timed in the same run.
        ratio_ci: bootstrap 95 % interval of ``ratio``.
    """

    model: str
    runtime: str
    file: str
    stats: LatencyStats
    rel_l2: float
    ratio: float | None = None
    ratio_ci: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "model": self.model,
            "runtime": self.runtime,
            "file": self.file,
            "threads": self.stats.threads,
            "rel_l2_vs_onnxruntime": self.rel_l2,
            "ratio_to_onnxruntime": self.ratio,
            "ratio_to_onnxruntime_ci95": list(self.ratio_ci) if self.ratio_ci else None,
            **self.stats.as_dict(),
        }


@dataclass
class RuntimeBenchReport:
    """Result of ``bench --runtimes``.

    Attributes:
        rows: per model, thread count and runtime, in run order.
        findings: slow paths the runtimes' own profilers found (one line each), when asked for.
        disclaimer: what x86 latencies are and are not.
    """

    rows: list[RuntimeRow] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    disclaimer: str = DISCLAIMER


def quiet_thread_pools() -> None:
    """Make ncnn's OpenMP threads sleep between calls; must run before ncnn is first imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def bench_runtimes(
    directory: Path,
    runtimes: Sequence[str],
    protocols: Sequence[TimingProtocol],
    progress: Progress = lambda _: None,
) -> list[RuntimeRow]:
    """Time one export's artifacts on ``runtimes`` interleaved, once per protocol (thread count).

    Args:
        directory: ``OUT/MODEL`` holding every runtime's artifact.
        runtimes: runtime names; ``onnxruntime`` among them gives the ratios.
        protocols: one timing run per protocol (thread count); batch 1 (the artifacts' fixed batch).
        progress: called as each step starts.

    Returns:
        One row per protocol and runtime.

    Raises:
        DeployforgeError: a missing artifact or runtime.
        RuntimesDisagree: an artifact's outputs differ from onnxruntime's beyond 1e-5.
    """
    quiet_thread_pools()
    manifest = read_manifest(directory)
    model = manifest.model
    targets = targets_for(runtimes)
    paths = []
    for target in targets:
        target.require()
        path = Path(directory) / target.files(model)[0]
        if not path.exists():
            raise DeployforgeError(f"{directory} has no {path.name}; export {model} with --to {target.name} first")
        paths.append(path)
    side = manifest.input.shape[-1]
    rows = []
    for protocol in protocols:
        inputs = np.random.default_rng(protocol.seed).standard_normal((1, 3, side, side)).astype(np.float32)
        progress(f"{model}: opening {', '.join(runtimes)} at {protocol.threads} thread(s)")
        runners = [target.load(path, protocol.threads) for target, path in zip(targets, paths, strict=True)]
        agreement = _check_agreement(model, targets, paths, runners, inputs)
        closures = [_timed(runner, inputs) for runner in runners]
        for closure in closures:
            _warmup(closure, protocol.warmup_s)
        progress(f"{model}: timing {', '.join(runtimes)} interleaved at {protocol.threads} thread(s)")
        samples = _time_interleaved(closures, protocol.runs, protocol.min_time_s)
        stats = [
            LatencyStats.from_samples(times, batch=1, threads=protocol.threads, macs=manifest.size.macs_onnx)
            for times in samples
        ]
        reference = runtimes.index(REFERENCE_RUNTIME) if REFERENCE_RUNTIME in runtimes else None
        for target, path, stat, rel_l2 in zip(targets, paths, stats, agreement, strict=True):
            row = RuntimeRow(model, target.runtime, path.name, stat, rel_l2)
            if reference is not None:
                base = stats[reference].samples_ms
                row.ratio = float(np.median(stat.samples_ms) / np.median(base))
                row.ratio_ci = bootstrap_ratio_of_medians(stat.samples_ms, base, seed=protocol.seed)
            rows.append(row)
        # released before the next thread count: ExecuTorch resizes its process-wide pool only with no runner alive
        del runners, closures
        gc.collect()
    return rows


def _timed(runner: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        runner(inputs)
        return (time.perf_counter() - started) * 1e3

    return run


def _check_agreement(
    model: str,
    targets: Sequence[Target],
    paths: Sequence[Path],
    runners: Sequence[Callable[[np.ndarray], np.ndarray]],
    inputs: np.ndarray,
) -> list[float]:
    outputs = [np.asarray(runner(inputs), dtype=np.float32).reshape(1, -1) for runner in runners]
    names = [t.runtime for t in targets]
    reference = names.index(REFERENCE_RUNTIME) if REFERENCE_RUNTIME in names else 0
    base = outputs[reference]
    agreement = []
    for target, path, output in zip(targets, paths, outputs, strict=True):
        parity = compare(output, base, TOLERANCES.runtime)
        if not parity.ok:
            raise RuntimesDisagree(
                f"{model}: {path.name} on {target.runtime} disagrees with {names[reference]} "
                f"(rel-L2 {parity.rel_l2:.3g} > {TOLERANCES.runtime:g}); timing them would compare two different "
                f"functions: re-export {model}"
            )
        agreement.append(parity.rel_l2)
    return agreement


def warnings_for(protocols: Sequence[TimingProtocol]) -> list[str]:
    """The thread-count warnings of the run (more threads than cores)."""
    return [w for w in (thread_warning(p.threads) for p in protocols) if w]


def profile_export(directory: Path, runtimes: Sequence[str], progress: Progress = lambda _: None) -> list[str]:
    """Run the profiler of every runtime that has one (a target with a ``profile`` method) on one export.

    Returns:
        One line per runtime profiled: where its time goes, by op kind, largest share first.
    """
    quiet_thread_pools()
    manifest = read_manifest(directory)
    side = manifest.input.shape[-1]
    inputs = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    lines = []
    for target in targets_for(runtimes):
        profile = getattr(target, "profile", None)
        if profile is None:
            continue
        path = Path(directory) / target.files(manifest.model)[0]
        progress(f"{manifest.model}: profiling {path.name} with {target.runtime}'s profiler")
        seconds = profile(path, inputs, 1)
        total = sum(seconds.values())
        if total <= 0:
            continue
        largest_first = sorted(seconds.items(), key=lambda item: -item[1])
        shares = ", ".join(f"{kind} {100 * value / total:.0f} %" for kind, value in largest_first)
        lines.append(f"{manifest.model} on {target.runtime} (1 thread, {1e3 * total:.1f} ms profiled): {shares}")
    return lines
