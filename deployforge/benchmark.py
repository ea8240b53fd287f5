"""onnxruntime CPU latency (docs/design.md, "Latency protocol"): sessions, warm-up, interleaved timing, statistics.

One timing protocol for every comparison: our deployed graph and any number of baselines (the multi-branch
original, a peer's exports) are checked to compute the same function, then timed round-robin in one process
(:func:`bench_interleaved`, :func:`bench_rows`); each baseline yields one :class:`BenchRow` with the ratio of
medians and its bootstrap interval. :func:`measure_peak` times the machine's FP32 GEMM peak under the same
session options, so achieved GFLOP/s can be read as a fraction of it.

A pure library: nothing here prints or parses arguments. The CLI imports this module lazily because it
imports onnxruntime at the top.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from deployforge.errors import DeployforgeError
from deployforge.manifest import Manifest, read_manifest
from deployforge.measure import SizeReport
from deployforge.options import (
    MAX_PEAK_GEMM_SIZE,
    MIN_PEAK_GEMM_SIZE,
    PEAK_GEMM_SIZE,
    Baseline,
    TimingProtocol,
    check_range,
)
from deployforge.parity import TOLERANCES, compare

if TYPE_CHECKING:
    from deployforge.runtime_bench import RuntimeBenchReport

MIN_WARMUP_RUNS = 10
MAX_RUNS_FACTOR = 10  # timing stops at this many times ``runs`` per model even if min_time_s is not reached
N_BOOTSTRAP = 2000
CHECK_BATCH = 2  # images in the agreement check of a dynamic-batch graph (a peer's parity batch has 2 too)


class BaselineDisagrees(DeployforgeError):
    """A baseline does not compute the same function as our deployed graph: timing them would mean nothing.

    A parity failure, so the CLI exits 1.
    """

    exit_code = 1


_ORT_DTYPES: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass
class LatencyStats:
    """Latency of one model under one thread count.

    Attributes:
        p50_ms: median latency of one inference call, milliseconds.
        p90_ms: 90th percentile, milliseconds.
        p99_ms: 99th percentile, milliseconds.
        mean_ms: mean, milliseconds.
        std_ms: sample standard deviation, milliseconds (0 for a single run).
        throughput: images per second, ``batch * 1000 / p50_ms``.
        n_runs: number of timed runs.
        batch: images per inference call.
        threads: ``intra_op_num_threads`` of the session (None when unknown).
        macs: multiply-accumulates of one image (None when unknown).
        peak_gflops: the FP32 GEMM peak measured in the same run at the same thread count (None when not
            measured), for :attr:`peak_fraction`.
        samples_ms: the raw timings, milliseconds (for the bootstrap; left out of ``as_dict``).
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    throughput: float
    n_runs: int
    batch: int = 1
    threads: int | None = None
    macs: int | None = None
    peak_gflops: float | None = None
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_samples(
        cls,
        samples_ms: Sequence[float],
        batch: int = 1,
        threads: int | None = None,
        macs: int | None = None,
        peak_gflops: float | None = None,
    ) -> LatencyStats:
        """Summarize raw timings.

        Args:
            samples_ms: latency of each timed call, milliseconds (at least one).
            batch: images per call.
            threads: intra-op thread count of the session.
            macs: multiply-accumulates of one image, when known.
            peak_gflops: the machine's FP32 GEMM peak at ``threads``, when measured in the same run.

        Returns:
            The statistics.

        Raises:
            DeployforgeError: when ``samples_ms`` is empty.
        """
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise DeployforgeError("no latency samples to summarize: run at least one timed inference")
        p50, p90, p99 = (float(v) for v in np.percentile(s, [50, 90, 99]))
        return cls(
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            mean_ms=float(s.mean()),
            std_ms=float(s.std(ddof=1)) if s.size > 1 else 0.0,
            throughput=batch * 1000.0 / p50 if p50 > 0 else float("inf"),
            n_runs=int(s.size),
            batch=batch,
            threads=threads,
            macs=macs,
            peak_gflops=peak_gflops,
            samples_ms=tuple(float(v) for v in s),
        )

    @property
    def gflops(self) -> float | None:
        """GFLOP/s achieved, ``2 · MACs · batch / p50`` (None when MACs are unknown)."""
        if self.macs is None or self.p50_ms <= 0:
            return None
        return 2.0 * self.macs * self.batch / (self.p50_ms * 1e-3) / 1e9

    @property
    def peak_fraction(self) -> float | None:
        """``gflops / peak_gflops``, the share of the measured FP32 GEMM peak (None when either is unknown)."""
        gflops = self.gflops
        if gflops is None or not self.peak_gflops:
            return None
        return gflops / self.peak_gflops

    def as_dict(self) -> dict:
        """JSON-ready view including ``gflops`` and ``peak_fraction`` (the raw timings left out)."""
        return {
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "throughput": self.throughput,
            "n_runs": self.n_runs,
            "batch": self.batch,
            "threads": self.threads,
            "macs": self.macs,
            "gflops": self.gflops,
            "peak_gflops": self.peak_gflops,
            "peak_fraction": self.peak_fraction,
        }


@dataclass
class PairResult:
    """One baseline (the multi-branch original, a peer's export) against our deployed model, from one interleaved run.

    Several baselines timed in the same run (:func:`bench_interleaved`) give one result each, all sharing
    the ``deployed`` statistics.

    Attributes:
        baseline: latency of the baseline.
        deployed: latency of our deployed (reparameterized) model.
        threads: ``intra_op_num_threads`` of every session of the run.
        speedup: ``median(baseline) / median(deployed)``; above 1 means ours is faster.
        speedup_ci: bootstrap 95 % interval ``(low, high)`` of ``speedup``.
        n_bootstrap: number of bootstrap resamples behind ``speedup_ci``.
        warning: the over-subscription warning of ``thread_warning``, or None.
        interleaved: how many graphs the run timed round-robin (ours and every baseline).
    """

    baseline: LatencyStats
    deployed: LatencyStats
    threads: int
    speedup: float
    speedup_ci: tuple[float, float]
    n_bootstrap: int = N_BOOTSTRAP
    warning: str | None = None
    interleaved: int = 2

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "threads": self.threads,
            "baseline": self.baseline.as_dict(),
            "deployed": self.deployed.as_dict(),
            "speedup": self.speedup,
            "speedup_ci95": list(self.speedup_ci),
            "n_bootstrap": self.n_bootstrap,
            "interleaved": self.interleaved,
            "warning": self.warning,
        }


def available_cores() -> int:
    """Number of CPU cores this process may run on.

    Returns:
        ``len(os.sched_getaffinity(0))`` where supported, else ``os.cpu_count()`` (at least 1).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_warning(threads: int, cores: int | None = None) -> str | None:
    """Warn when a thread count over-subscribes the available cores.

    Args:
        threads: requested ``intra_op_num_threads``.
        cores: cores available; defaults to ``available_cores()``.

    Returns:
        A one-line warning when ``threads > cores``, else None.
    """
    cores = available_cores() if cores is None else cores
    if threads > cores:
        return (
            f"{threads} threads exceed the {cores} available core(s): "
            "threads will time-share cores and latencies will be inflated"
        )
    return None


def make_session(path: Path | str | bytes, threads: int) -> ort.InferenceSession:
    """Open an onnxruntime CPU session with the protocol's options.

    Args:
        path: ONNX file, or a serialized model.
        threads: ``intra_op_num_threads`` (checked by :class:`TimingProtocol`).

    Returns:
        The session.

    Raises:
        DeployforgeError: when the file is missing or onnxruntime cannot load it.
    """
    if isinstance(path, bytes):
        source, where = path, "the in-memory model"
    else:
        path = Path(path)
        if not path.is_file():
            raise DeployforgeError(f"no ONNX file at {path}: export the model first (deployforge export)")
        source, where = str(path), str(path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Sessions are timed interleaved: spinning idle threads of one would steal the cores of the other.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated exception types
        raise DeployforgeError(f"onnxruntime cannot load {where}: {e}") from e


def make_feed(
    session: ort.InferenceSession,
    batch: int = 1,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs for every input of a session, shapes read from the model.

    The leading dimension, when symbolic, becomes ``batch``. Any other symbolic dimension needs
    ``input_shape`` (used for every input whose rank matches).

    Args:
        session: the session.
        batch: images per call.
        seed: seed of the random inputs.
        input_shape: full shape overriding the model's, batch included.

    Returns:
        Input name → array.

    Raises:
        DeployforgeError: on a fixed batch other than ``batch``, an unresolved symbolic dimension or an
            unsupported input type.
    """
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        dims = list(inp.shape)
        if input_shape is not None and len(input_shape) == len(dims):
            shape = [int(d) for d in input_shape]
        else:
            shape = []
            for i, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    if i == 0 and d != batch:
                        raise DeployforgeError(
                            f"input {inp.name!r} has a fixed batch of {d}, not {batch}: bench with "
                            f"batch {d} or export with a dynamic batch"
                        )
                    shape.append(d)
                elif i == 0:
                    shape.append(batch)
                else:
                    raise DeployforgeError(
                        f"input {inp.name!r} has a symbolic dimension {i} ({d!r}) in {dims}: pass the full "
                        "input shape or export with a fixed input size"
                    )
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise DeployforgeError(f"input {inp.name!r} has unsupported type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype=dtype)
    return feed


def _runner(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Callable[[], float]:
    """A closure running one inference and returning its latency in milliseconds."""

    def run() -> float:
        t0 = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - t0) * 1e3

    return run


def _warmup(run: Callable[[], float], warmup_s: float) -> None:
    """Run at least ``MIN_WARMUP_RUNS`` times and at least ``warmup_s`` seconds."""
    n = 0
    t0 = time.perf_counter()
    while n < MIN_WARMUP_RUNS or time.perf_counter() - t0 < warmup_s:
        run()
        n += 1


def _time_interleaved(runs_fns: Sequence[Callable[[], float]], runs: int, min_time_s: float) -> list[list[float]]:
    """Time the models round-robin until each has ``runs`` samples and ``min_time_s`` elapsed (capped)."""
    samples: list[list[float]] = [[] for _ in runs_fns]
    cap = max(runs, MAX_RUNS_FACTOR * runs)
    t0 = time.perf_counter()
    while len(samples[0]) < cap and (len(samples[0]) < runs or time.perf_counter() - t0 < min_time_s):
        for fn, acc in zip(runs_fns, samples, strict=True):
            acc.append(fn())
    return samples


def bootstrap_ratio_of_medians(
    numerator: Sequence[float],
    denominator: Sequence[float],
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``median(numerator) / median(denominator)``.

    Each sample set is resampled with replacement independently.

    Args:
        numerator: samples of the numerator (e.g. multi-branch latencies).
        denominator: samples of the denominator (e.g. the deployed model's latencies).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.
        confidence: coverage of the interval.

    Returns:
        ``(low, high)``.

    Raises:
        DeployforgeError: when either sample set is empty.
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise DeployforgeError("bootstrap needs at least one sample in each set")
    rng = np.random.default_rng(seed)
    med_a = np.median(a[rng.integers(0, a.size, size=(n_resamples, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, size=(n_resamples, b.size))], axis=1)
    ratios = med_a / med_b
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return float(low), float(high)


def time_models(
    paths: Sequence[Path | str],
    protocol: TimingProtocol,
    macs: Sequence[int | None] | None = None,
    input_shape: Sequence[int] | None = None,
    peak_gflops: float | None = None,
) -> list[LatencyStats]:
    """Time ONNX models interleaved in one process under ``protocol``.

    Every session is opened and warmed up (at least 10 runs and ``warmup_s`` seconds), then runs alternate
    A, B, …, A, B, … until each has at least ``runs`` samples and ``min_time_s`` seconds have passed,
    capped at ``MAX_RUNS_FACTOR · runs`` samples each. Models with matching inputs get the same inputs.

    Args:
        paths: ONNX files.
        protocol: threads, batch and timing budget.
        macs: per-image MACs of each model, for its GFLOP/s.
        input_shape: full input shape when the models have symbolic spatial dimensions.
        peak_gflops: the FP32 GEMM peak at ``protocol.threads`` measured in the same run, if any.

    Returns:
        One statistics record per model, in order.

    Raises:
        DeployforgeError: on an unloadable model or unresolvable input shape.
    """
    sessions = [make_session(path, protocol.threads) for path in paths]
    runners = [_runner(s, make_feed(s, protocol.batch, protocol.seed, input_shape)) for s in sessions]
    for run in runners:
        _warmup(run, protocol.warmup_s)
    samples = _time_interleaved(runners, protocol.runs, protocol.min_time_s)
    macs = list(macs) if macs is not None else [None] * len(paths)
    return [
        LatencyStats.from_samples(
            times, batch=protocol.batch, threads=protocol.threads, macs=count, peak_gflops=peak_gflops
        )
        for times, count in zip(samples, macs, strict=True)
    ]


def bench_interleaved(
    deployed: Path | str,
    baselines: Sequence[Path | str],
    protocol: TimingProtocol,
    macs_deployed: int | None = None,
    macs_baselines: Sequence[int | None] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    input_shape: Sequence[int] | None = None,
    peak_gflops: float | None = None,
) -> list[PairResult]:
    """Time our deployed model and every baseline round-robin in one process (:func:`time_models`).

    All graphs share the run, so every ratio is taken under the same machine state.

    Args:
        deployed: ONNX file of our deployed model.
        baselines: ONNX files of the baselines (the multi-branch original, peers' exports); at least one.
        protocol: threads, batch and timing budget.
        macs_deployed: per-image MACs of the deployed model, for its GFLOP/s.
        macs_baselines: per-image MACs of each baseline, for their GFLOP/s.
        n_bootstrap: bootstrap resamples for each speedup interval.
        input_shape: full input shape when the models have symbolic spatial dimensions.
        peak_gflops: the FP32 GEMM peak at ``protocol.threads`` measured in the same run, if any.

    Returns:
        One result per baseline, in order: its statistics, ours, the ratio of medians (baseline / ours) and
        its bootstrap 95 % interval.

    Raises:
        DeployforgeError: no baseline, or an unloadable model.
    """
    if not baselines:
        raise DeployforgeError("nothing to compare with: give at least one baseline graph")
    macs_baselines = list(macs_baselines) if macs_baselines is not None else [None] * len(baselines)
    *stats_baselines, stats_deployed = time_models(
        [*baselines, deployed], protocol, [*macs_baselines, macs_deployed], input_shape, peak_gflops
    )
    ours = stats_deployed.samples_ms
    return [
        PairResult(
            baseline=stats,
            deployed=stats_deployed,
            threads=protocol.threads,
            speedup=float(np.median(stats.samples_ms) / np.median(ours)),
            speedup_ci=bootstrap_ratio_of_medians(stats.samples_ms, ours, n_resamples=n_bootstrap, seed=protocol.seed),
            n_bootstrap=n_bootstrap,
            warning=thread_warning(protocol.threads),
            interleaved=len(baselines) + 1,
        )
        for stats in stats_baselines
    ]


def bench_pair(
    baseline: Path | str,
    deployed: Path | str,
    protocol: TimingProtocol,
    macs_baseline: int | None = None,
    macs_deployed: int | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    input_shape: Sequence[int] | None = None,
    peak_gflops: float | None = None,
) -> PairResult:
    """:func:`bench_interleaved` with a single baseline.

    Returns:
        Both models' statistics, the ratio of medians and its bootstrap 95 % interval.

    Raises:
        DeployforgeError: on an unloadable model.
    """
    (pair,) = bench_interleaved(
        deployed, [baseline], protocol, macs_deployed, [macs_baseline], n_bootstrap, input_shape, peak_gflops
    )
    return pair


@dataclass
class Peak:
    """The machine's FP32 GEMM throughput at one thread count: one square MatMul under the protocol's options.

    Attributes:
        size: side of the square matrices (``size × size`` times ``size × size``).
        stats: its latency; ``stats.macs`` is ``size³``, so ``stats.gflops`` is the peak.
    """

    size: int
    stats: LatencyStats

    @property
    def threads(self) -> int:
        """``intra_op_num_threads`` of the measurement."""
        return int(self.stats.threads or 1)

    @property
    def gflops(self) -> float:
        """GFLOP/s at the median latency, ``2 · size³ / p50``."""
        return float(self.stats.gflops or 0.0)

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "threads": self.threads,
            "size": self.size,
            "gflops": self.gflops,
            "p50_ms": self.stats.p50_ms,
            "p90_ms": self.stats.p90_ms,
            "n_runs": self.stats.n_runs,
        }


def gemm_model(size: int, seed: int = 0) -> bytes:
    """A serialized ONNX graph of one FP32 MatMul: input ``(size, size)`` times a constant ``(size, size)``.

    The constant right-hand side is what a Conv, Gemm or MatMul of a deployed model has: its weights.
    """
    weight = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "gemm_peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        initializer=[numpy_helper.from_array(weight, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure_peak(protocol: TimingProtocol, size: int = PEAK_GEMM_SIZE) -> Peak:
    """Measure the FP32 GEMM peak at ``protocol.threads`` with onnxruntime.

    The MatMul runs in a session with the protocol's options (:func:`make_session`), warmed up and timed as
    a model is (at least ``runs`` runs and ``min_time_s`` seconds); the peak is read at the median latency,
    as a model's GFLOP/s is.

    Args:
        protocol: threads and timing budget (its batch is ignored).
        size: side of the square matrices.

    Returns:
        The measurement.

    Raises:
        InvalidSetting: ``size`` outside its range.
    """
    check_range(size, MIN_PEAK_GEMM_SIZE, MAX_PEAK_GEMM_SIZE, "peak_size", "GEMM size")
    session = make_session(gemm_model(size, protocol.seed), protocol.threads)
    run = _runner(session, make_feed(session, seed=protocol.seed, input_shape=(size, size)))
    _warmup(run, protocol.warmup_s)
    (samples,) = _time_interleaved([run], protocol.runs, protocol.min_time_s)
    return Peak(size, LatencyStats.from_samples(samples, threads=protocol.threads, macs=size**3))


@dataclass(frozen=True)
class BaselineGraph:
    """A baseline's ONNX graph, what it is, and whether it computes what our deployed graph computes.

    Attributes:
        baseline: what the graph is.
        path: the ONNX file.
        macs: MACs per image of the graph, for its GFLOP/s.
        rel_l2: its outputs against our deployed graph's (rel-L2), once :func:`check_baselines` compared them.
    """

    baseline: Baseline
    path: Path
    macs: int | None = None
    rel_l2: float | None = None


def _first_output(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def check_baselines(
    deployed: Path | str,
    baselines: Sequence[BaselineGraph],
    inputs: np.ndarray | None = None,
    batch: int = CHECK_BATCH,
    seed: int = 0,
    tolerance: float = TOLERANCES.onnx,
) -> tuple[BaselineGraph, ...]:
    """Check that every baseline computes the same function as our deployed graph, before anything is timed.

    Each graph runs in a session with the protocol's options (the very graphs onnxruntime will time) on the
    same inputs; a baseline agrees when its rel-L2 against ours is within ``tolerance``
    (docs/design.md, "Parity and tolerances").

    Args:
        deployed: ONNX file of our deployed model.
        baselines: the graphs to check.
        inputs: the batch to compare on (the parity batch); by default ``batch`` random ``N(0, 1)`` inputs
            shaped as the deployed graph's input.
        batch: images in the default batch.
        seed: seed of the default batch.
        tolerance: the rel-L2 bound.

    Returns:
        The baselines with ``rel_l2`` filled in.

    Raises:
        BaselineDisagrees: a baseline is over ``tolerance`` (or not finite); the message names it.
        DeployforgeError: an unloadable graph.
    """
    ours = make_session(deployed, 1)
    if inputs is None:
        inputs = next(iter(make_feed(ours, batch, seed).values()))
    reference = _first_output(ours, inputs)
    checked = []
    for graph in baselines:
        agreement = compare(_first_output(make_session(graph.path, 1), inputs), reference, tolerance)
        if not agreement.ok:
            raise BaselineDisagrees(
                f"the {graph.baseline.value} baseline {Path(graph.path).name} and our {Path(deployed).name} disagree "
                f"(rel-L2 {agreement.rel_l2:.3g} > {tolerance:g}); timing them would compare two different "
                "functions: re-export both from the same weights"
            )
        checked.append(dataclasses.replace(graph, rel_l2=agreement.rel_l2))
    return tuple(checked)


@dataclass
class BenchRow:
    """One model's deployed ONNX against one baseline at one thread count.

    Attributes:
        model: registry name.
        against: the baseline (``multi-branch``, ``timm``, ``timm-dynamo``).
        size: the export's params and MACs.
        pair: the interleaved timings (shared with the other baselines of the same run).
        rel_l2: the baseline's outputs against ours, checked before timing.
    """

    model: str
    against: Baseline
    size: SizeReport
    pair: PairResult
    rel_l2: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "model": self.model,
            "against": self.against.value,
            "rel_l2": self.rel_l2,
            "params": self.size.params_onnx,
            "params_multibranch": self.size.params_onnx_multibranch,
            "macs": self.size.macs_onnx,
            **self.pair.as_dict(),
        }


@dataclass
class BenchReport:
    """Result of a bench run.

    Attributes:
        rows: per model, thread count and baseline, in run order.
        peaks: the FP32 GEMM peak per thread count, when measured.
        warnings: what may distort the figures (more threads than cores).
        notes: what the run did on its own (an export built in a scratch directory, and why).
        runtimes: with ``bench --runtimes``, every runtime's latency instead of ``rows``
            (:class:`deployforge.runtime_bench.RuntimeBenchReport`).
    """

    rows: list[BenchRow] = field(default_factory=list)
    runtimes: RuntimeBenchReport | None = None
    peaks: list[Peak] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def onnx_pair(directory: Path) -> tuple[Manifest, Path, Path]:
    """The manifest, multi-branch ONNX and deployed ONNX of an export directory.

    Raises:
        DeployforgeError: no manifest, or the export has no ONNX pair.
    """
    manifest = read_manifest(directory)
    name = manifest.model
    multi, merged = directory / f"{name}.multibranch.onnx", directory / f"{name}.onnx"
    if not (multi.is_file() and merged.is_file()):
        raise DeployforgeError(
            f"{directory} has no ONNX pair ({multi.name}, {merged.name}); export {name} to ONNX first"
        )
    return manifest, multi, merged


def bench_rows(
    model: str,
    size: SizeReport,
    deployed: Path,
    baselines: Sequence[BaselineGraph],
    protocols: Sequence[TimingProtocol],
    progress: Callable[[str], None] = lambda _: None,
    peaks: Sequence[Peak] = (),
    fixed_batch: int | None = None,
) -> list[BenchRow]:
    """Check every baseline against our deployed graph, then time them all interleaved, once per protocol.

    Baselines not yet checked (``rel_l2`` None) are checked first (:func:`check_baselines`, on random
    inputs); one that disagrees stops everything before any timing.

    Args:
        model: registry name.
        size: the export's params and MACs (``macs_onnx`` is ours).
        deployed: ONNX file of our deployed model.
        baselines: the graphs to time against ours, all in the same run.
        protocols: one timing run per protocol (thread count).
        progress: called as each step starts.
        peaks: FP32 GEMM peaks measured in this run; a row's GFLOP/s is read against the one of its thread
            count.
        fixed_batch: the batch of a fixed-batch graph (every protocol is timed at it).

    Returns:
        One row per protocol and baseline, protocol by protocol, baselines in order.

    Raises:
        BaselineDisagrees: a baseline computes another function.
        DeployforgeError: an unloadable model.
    """
    if any(graph.rel_l2 is None for graph in baselines):
        progress(f"{model}: checking {len(baselines)} baseline(s) compute what ours computes")
        baselines = check_baselines(deployed, baselines, batch=fixed_batch or CHECK_BATCH)
    peak_at = {peak.threads: peak.gflops for peak in peaks}
    rows = []
    for protocol in protocols:
        if fixed_batch is not None:  # a graph of fixed batch is timed at that batch
            protocol = dataclasses.replace(protocol, batch=fixed_batch)
        names = ", ".join(graph.baseline.value for graph in baselines)
        progress(f"{model}: timing ours, {names} interleaved at {protocol.threads} thread(s)")
        pairs = bench_interleaved(
            deployed,
            [graph.path for graph in baselines],
            protocol,
            size.macs_onnx,
            [graph.macs for graph in baselines],
            peak_gflops=peak_at.get(protocol.threads),
        )
        rows += [
            BenchRow(model, graph.baseline, size, pair, graph.rel_l2)
            for graph, pair in zip(baselines, pairs, strict=True)
        ]
    return rows


def bench_export(
    directory: Path,
    protocols: Sequence[TimingProtocol],
    progress: Callable[[str], None] = lambda _: None,
    peaks: Sequence[Peak] = (),
) -> list[BenchRow]:
    """Time an export's multi-branch and deployed ONNX, interleaved, once per protocol (thread count).

    Args:
        directory: ``OUT/MODEL`` written by ``export`` with ONNX artifacts.
        protocols: one timing protocol per row.
        progress: called as each timing starts.
        peaks: FP32 GEMM peaks measured in this run (:func:`measure_peak`).

    Returns:
        One row per protocol.

    Raises:
        BaselineDisagrees: the two graphs compute different functions.
        DeployforgeError: no ONNX pair, or an unloadable model.
    """
    manifest, multi, merged = onnx_pair(Path(directory))
    baseline = BaselineGraph(Baseline.MULTI_BRANCH, multi, manifest.size.macs_onnx_multibranch)
    return bench_rows(
        manifest.model,
        manifest.size,
        merged,
        [baseline],
        protocols,
        progress,
        peaks,
        fixed_batch=manifest.input.fixed_batch,
    )
