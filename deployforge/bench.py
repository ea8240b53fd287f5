"""onnxruntime CPU latency protocol (DESIGN section 6): sessions, warm-up, interleaved timing, statistics.

A pure library: nothing here prints or parses arguments. The CLI imports this module lazily because it
imports onnxruntime at the top.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from deployforge.errors import DeployforgeError

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
        samples_ms: the raw timings, milliseconds (left out of ``as_dict`` unless asked).
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
        return self.gflops_for(self.macs)

    def gflops_for(self, macs: int | None) -> float | None:
        """GFLOP/s achieved at the median latency for a given per-image MAC count.

        Args:
            macs: multiply-accumulates of one image; None gives None.

        Returns:
            ``2 · macs · batch / p50`` in GFLOP/s, or None.
        """
        if macs is None or self.p50_ms <= 0:
            return None
        return 2.0 * macs * self.batch / (self.p50_ms * 1e-3) / 1e9

    def as_dict(self, include_samples: bool = False) -> dict:
        """JSON-ready view including ``gflops``.

        Args:
            include_samples: also include the raw timings as ``samples_ms``.

        Returns:
            A dict of plain Python values.
        """
        d = {
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
        if include_samples:
            d["samples_ms"] = list(self.samples_ms)
        return d


@dataclass
class PairResult:
    """Interleaved comparison of a multi-branch model with its reparameterized form.

    Attributes:
        multi_branch: latency of the multi-branch model.
        reparameterized: latency of the reparameterized model.
        threads: ``intra_op_num_threads`` of both sessions.
        speedup: ``median(multi_branch) / median(reparameterized)``; above 1 means reparameterizing helped.
        speedup_ci: bootstrap 95 % interval ``(low, high)`` of ``speedup``.
        n_bootstrap: number of bootstrap resamples behind ``speedup_ci``.
        warning: the over-subscription warning of ``thread_warning``, or None.
    """

    multi_branch: LatencyStats
    reparameterized: LatencyStats
    threads: int
    speedup: float
    speedup_ci: tuple[float, float]
    n_bootstrap: int = N_BOOTSTRAP
    warning: str | None = None

    def as_dict(self, include_samples: bool = False) -> dict:
        """JSON-ready view.

        Args:
            include_samples: also include each model's raw timings.

        Returns:
            A dict of plain Python values.
        """
        return {
            "threads": self.threads,
            "multi_branch": self.multi_branch.as_dict(include_samples),
            "reparameterized": self.reparameterized.as_dict(include_samples),
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


def validate_threads(threads: int) -> int:
    """Check a thread count.

    Args:
        threads: requested ``intra_op_num_threads``.

    Returns:
        ``threads`` unchanged.

    Raises:
        DeployforgeError: when it is not an integer ≥ 1.
    """
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise DeployforgeError(f"--threads must be a whole number >= 1, got {threads!r}")
    return int(threads)


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
            f"--threads {threads} exceeds the {cores} available core(s): "
            "threads will time-share cores and latencies will be inflated"
        )
    return None


def make_session(path: Path | str, threads: int) -> ort.InferenceSession:
    """Open an onnxruntime CPU session with the section-6 options.

    Args:
        path: ONNX file.
        threads: ``intra_op_num_threads``.

    Returns:
        The session.

    Raises:
        DeployforgeError: when the file is missing, ``threads`` is invalid, or onnxruntime cannot load it.
    """
    threads = validate_threads(threads)
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
                            f"batch {d} or export with --batch dynamic"
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


def _check_protocol(batch: int, runs: int, warmup_s: float, min_time_s: float) -> None:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise DeployforgeError(f"batch must be a whole number >= 1, got {batch!r}")
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise DeployforgeError(f"--runs must be a whole number >= 1, got {runs!r}")
    if not warmup_s >= 0:
        raise DeployforgeError(f"--warmup-s must be >= 0, got {warmup_s!r}")
    if not min_time_s >= 0:
        raise DeployforgeError(f"min_time_s must be >= 0, got {min_time_s!r}")


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
        denominator: samples of the denominator (e.g. reparameterized latencies).
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


def bench_one(
    path: Path | str,
    threads: int,
    batch: int = 1,
    runs: int = 50,
    warmup_s: float = 1.0,
    min_time_s: float = 5.0,
    seed: int = 0,
    macs: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> LatencyStats:
    """Latency of one ONNX model under the section-6 protocol.

    Warm-up: at least 10 runs and ``warmup_s`` seconds. Timing: until at least ``runs`` samples and
    ``min_time_s`` seconds, capped at ``10 · runs`` samples.

    Args:
        path: ONNX file.
        threads: ``intra_op_num_threads``.
        batch: images per call (sets a symbolic leading dimension).
        runs: minimum timed runs.
        warmup_s: minimum warm-up time, seconds.
        min_time_s: minimum timing time, seconds.
        seed: seed of the random inputs.
        macs: per-image multiply-accumulates, for GFLOP/s.
        input_shape: full input shape when the model has symbolic spatial dimensions.

    Returns:
        The statistics.

    Raises:
        DeployforgeError: on invalid arguments or an unloadable model.
    """
    threads = validate_threads(threads)
    _check_protocol(batch, runs, warmup_s, min_time_s)
    session = make_session(path, threads)
    run = _runner(session, make_feed(session, batch, seed, input_shape))
    _warmup(run, warmup_s)
    (samples,) = _time_interleaved([run], runs, min_time_s)
    return LatencyStats.from_samples(samples, batch=batch, threads=threads, macs=macs)


def bench_pair(
    multi_branch: Path | str,
    reparameterized: Path | str,
    threads: int,
    batch: int = 1,
    runs: int = 50,
    warmup_s: float = 1.0,
    min_time_s: float = 5.0,
    seed: int = 0,
    macs_multi_branch: int | None = None,
    macs_reparameterized: int | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    input_shape: Sequence[int] | None = None,
) -> PairResult:
    """Compare a multi-branch model with its reparameterized form, timed interleaved in one process.

    Both sessions are opened, each is warmed up (at least 10 runs and ``warmup_s`` seconds), then runs
    alternate A, B, A, B, … until each has at least ``runs`` samples and ``min_time_s`` seconds have
    passed, capped at ``10 · runs`` samples each. Both models get the same random inputs when their
    inputs match.

    Args:
        multi_branch: ONNX file of the multi-branch (training-form) model.
        reparameterized: ONNX file of the reparameterized model.
        threads: ``intra_op_num_threads`` of both sessions.
        batch: images per call (sets a symbolic leading dimension).
        runs: minimum timed runs per model.
        warmup_s: minimum warm-up time per model, seconds.
        min_time_s: minimum total timing time, seconds.
        seed: seed of the random inputs and of the bootstrap.
        macs_multi_branch: per-image MACs of the multi-branch model, for its GFLOP/s.
        macs_reparameterized: per-image MACs of the reparameterized model, for its GFLOP/s.
        n_bootstrap: bootstrap resamples for the speedup interval.
        input_shape: full input shape when the models have symbolic spatial dimensions.

    Returns:
        Both models' statistics, the ratio of medians and its bootstrap 95 % interval.

    Raises:
        DeployforgeError: on invalid arguments or an unloadable model.
    """
    threads = validate_threads(threads)
    _check_protocol(batch, runs, warmup_s, min_time_s)
    sess_a = make_session(multi_branch, threads)
    sess_b = make_session(reparameterized, threads)
    feed_a = make_feed(sess_a, batch, seed, input_shape)
    feed_b = make_feed(sess_b, batch, seed, input_shape)
    run_a, run_b = _runner(sess_a, feed_a), _runner(sess_b, feed_b)
    _warmup(run_a, warmup_s)
    _warmup(run_b, warmup_s)
    samples_a, samples_b = _time_interleaved([run_a, run_b], runs, min_time_s)
    stats_a = LatencyStats.from_samples(samples_a, batch=batch, threads=threads, macs=macs_multi_branch)
    stats_b = LatencyStats.from_samples(samples_b, batch=batch, threads=threads, macs=macs_reparameterized)
    speedup = float(np.median(samples_a) / np.median(samples_b))
    ci = bootstrap_ratio_of_medians(samples_a, samples_b, n_resamples=n_bootstrap, seed=seed)
    return PairResult(
        multi_branch=stats_a,
        reparameterized=stats_b,
        threads=threads,
        speedup=speedup,
        speedup_ci=ci,
        n_bootstrap=n_bootstrap,
        warning=thread_warning(threads),
    )
