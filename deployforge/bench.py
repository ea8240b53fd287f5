"""onnxruntime CPU latency (docs/design.md, "Latency protocol"): sessions, warm-up, interleaved timing, statistics.

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

import numpy as np
import onnxruntime as ort

from deployforge.errors import DeployforgeError
from deployforge.manifest import Manifest, read_manifest
from deployforge.measure import SizeReport
from deployforge.options import Against, TimingProtocol

MIN_WARMUP_RUNS = 10
MAX_RUNS_FACTOR = 10  # timing stops at this many times ``runs`` per model even if min_time_s is not reached
N_BOOTSTRAP = 2000

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
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_samples(
        cls,
        samples_ms: Sequence[float],
        batch: int = 1,
        threads: int | None = None,
        macs: int | None = None,
    ) -> LatencyStats:
        """Summarize raw timings.

        Args:
            samples_ms: latency of each timed call, milliseconds (at least one).
            batch: images per call.
            threads: intra-op thread count of the session.
            macs: multiply-accumulates of one image, when known.

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
            samples_ms=tuple(float(v) for v in s),
        )

    @property
    def gflops(self) -> float | None:
        """GFLOP/s achieved, ``2 · MACs · batch / p50`` (None when MACs are unknown)."""
        if self.macs is None or self.p50_ms <= 0:
            return None
        return 2.0 * self.macs * self.batch / (self.p50_ms * 1e-3) / 1e9

    def as_dict(self) -> dict:
        """JSON-ready view including ``gflops`` (the raw timings left out)."""
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
        }


@dataclass
class PairResult:
    """Interleaved comparison of a baseline (the multi-branch original, a peer's export) with our deployed model.

    Attributes:
        baseline: latency of the baseline.
        deployed: latency of our deployed (reparameterized) model.
        threads: ``intra_op_num_threads`` of both sessions.
        speedup: ``median(baseline) / median(deployed)``; above 1 means ours is faster.
        speedup_ci: bootstrap 95 % interval ``(low, high)`` of ``speedup``.
        n_bootstrap: number of bootstrap resamples behind ``speedup_ci``.
        warning: the over-subscription warning of ``thread_warning``, or None.
    """

    baseline: LatencyStats
    deployed: LatencyStats
    threads: int
    speedup: float
    speedup_ci: tuple[float, float]
    n_bootstrap: int = N_BOOTSTRAP
    warning: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "threads": self.threads,
            "baseline": self.baseline.as_dict(),
            "deployed": self.deployed.as_dict(),
            "speedup": self.speedup,
            "speedup_ci95": list(self.speedup_ci),
            "n_bootstrap": self.n_bootstrap,
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


def make_session(path: Path | str, threads: int) -> ort.InferenceSession:
    """Open an onnxruntime CPU session with the protocol's options.

    Args:
        path: ONNX file.
        threads: ``intra_op_num_threads`` (checked by :class:`TimingProtocol`).

    Returns:
        The session.

    Raises:
        DeployforgeError: when the file is missing or onnxruntime cannot load it.
    """
    path = Path(path)
    if not path.is_file():
        raise DeployforgeError(f"no ONNX file at {path}: export the model first (deployforge export)")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Sessions are timed interleaved: spinning idle threads of one would steal the cores of the other.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated exception types
        raise DeployforgeError(f"onnxruntime cannot load {path}: {e}") from e


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
        LatencyStats.from_samples(times, batch=protocol.batch, threads=protocol.threads, macs=count)
        for times, count in zip(samples, macs, strict=True)
    ]


def bench_pair(
    baseline: Path | str,
    deployed: Path | str,
    protocol: TimingProtocol,
    macs_baseline: int | None = None,
    macs_deployed: int | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    input_shape: Sequence[int] | None = None,
) -> PairResult:
    """Compare a baseline with our deployed model, timed interleaved (:func:`time_models`).

    Args:
        baseline: ONNX file of the baseline (the multi-branch original, a peer's export).
        deployed: ONNX file of our deployed model.
        protocol: threads, batch and timing budget.
        macs_baseline: per-image MACs of the baseline, for its GFLOP/s.
        macs_deployed: per-image MACs of the deployed model, for its GFLOP/s.
        n_bootstrap: bootstrap resamples for the speedup interval.
        input_shape: full input shape when the models have symbolic spatial dimensions.

    Returns:
        Both models' statistics, the ratio of medians and its bootstrap 95 % interval.

    Raises:
        DeployforgeError: on an unloadable model.
    """
    stats_a, stats_b = time_models([baseline, deployed], protocol, [macs_baseline, macs_deployed], input_shape)
    samples_a, samples_b = stats_a.samples_ms, stats_b.samples_ms
    return PairResult(
        baseline=stats_a,
        deployed=stats_b,
        threads=protocol.threads,
        speedup=float(np.median(samples_a) / np.median(samples_b)),
        speedup_ci=bootstrap_ratio_of_medians(samples_a, samples_b, n_resamples=n_bootstrap, seed=protocol.seed),
        n_bootstrap=n_bootstrap,
        warning=thread_warning(protocol.threads),
    )


@dataclass
class BenchRow:
    """One model's deployed ONNX against one baseline at one thread count.

    Attributes:
        model: registry name.
        against: the baseline (``multi-branch``, ``timm``).
        size: the export's params and MACs.
        pair: the interleaved timings.
        rel_l2: the baseline's outputs against ours on the parity batch, where they were compared.
    """

    model: str
    against: Against
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


def bench_export(
    directory: Path, protocols: Sequence[TimingProtocol], progress: Callable[[str], None] = lambda _: None
) -> list[BenchRow]:
    """Time an export's multi-branch and deployed ONNX, interleaved, once per protocol (thread count).

    Args:
        directory: ``OUT/MODEL`` written by ``export`` with ONNX artifacts.
        protocols: one timing protocol per row.
        progress: called as each timing starts.

    Returns:
        One row per protocol.

    Raises:
        DeployforgeError: no ONNX pair, or an unloadable model.
    """
    manifest, multi, merged = onnx_pair(Path(directory))
    rows = []
    for protocol in protocols:
        if manifest.input.fixed_batch is not None:  # a graph of fixed batch is timed at that batch
            protocol = dataclasses.replace(protocol, batch=manifest.input.fixed_batch)
        progress(f"{manifest.model}: timing at {protocol.threads} thread(s)")
        pair = bench_pair(multi, merged, protocol, manifest.size.macs_onnx_multibranch, manifest.size.macs_onnx)
        rows.append(BenchRow(manifest.model, Against.MULTI_BRANCH, manifest.size, pair))
    return rows
