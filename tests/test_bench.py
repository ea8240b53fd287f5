"""Latency protocol: structure of the results only, never which model is faster or absolute times."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployforge import bench
from deployforge.errors import DeployforgeError, InvalidSetting
from deployforge.options import TimingProtocol

FAST = TimingProtocol(threads=1, runs=10, warmup_s=0.05, min_time_s=0.1)


def _conv_model(path: Path, n_convs: int, batch: int | str = "N") -> Path:
    """A chain of ``n_convs`` 3x3 convs (8 channels, 16x16), leading dimension ``batch``."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i in range(n_convs):
        w = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1, f"w{i}")
        inits.append(w)
        out = "y" if i == n_convs - 1 else f"h{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [out], pads=[1, 1, 1, 1]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 16, 16])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("bench")
    return _conv_model(d / "multi.onnx", 2), _conv_model(d / "reparam.onnx", 1)


def _check_stats(s: bench.LatencyStats, runs: int, batch: int) -> None:
    assert 0 < s.p50_ms <= s.p90_ms <= s.p99_ms
    assert s.mean_ms > 0 and s.std_ms >= 0
    assert s.n_runs >= runs and len(s.samples_ms) == s.n_runs
    assert s.n_runs <= bench.MAX_RUNS_FACTOR * runs
    assert s.batch == batch
    assert math.isclose(s.throughput, batch * 1000.0 / s.p50_ms)


def test_bench_pair(models: tuple[Path, Path]) -> None:
    multi, reparam = models
    r = bench.bench_pair(multi, reparam, FAST, macs_baseline=2 * 8 * 8 * 9 * 256, macs_deployed=None)
    _check_stats(r.baseline, 10, 1)
    _check_stats(r.deployed, 10, 1)
    # interleaved: both models get the same number of samples
    assert r.baseline.n_runs == r.deployed.n_runs
    assert r.threads == 1 and r.warning is None
    lo, hi = r.speedup_ci
    assert 0 < lo <= r.speedup <= hi
    assert math.isclose(r.speedup, r.baseline.p50_ms / r.deployed.p50_ms)
    g = r.baseline.gflops
    assert g is not None and math.isclose(g, 2 * 2 * 8 * 8 * 9 * 256 / (r.baseline.p50_ms * 1e-3) / 1e9)
    assert r.deployed.gflops is None
    d = json.loads(json.dumps(r.as_dict()))
    assert set(d) >= {"threads", "baseline", "deployed", "speedup", "speedup_ci95", "warning"}
    assert "samples_ms" not in d["baseline"]


def test_time_models_dynamic_batch(models: tuple[Path, Path]) -> None:
    (s,) = bench.time_models([models[1]], dataclasses.replace(FAST, batch=2), macs=[1000])
    _check_stats(s, 10, 2)
    assert s.threads == 1 and s.macs == 1000 and s.gflops is not None
    json.dumps(s.as_dict())


def test_time_models_interleaves_every_model(models: tuple[Path, Path]) -> None:
    stats = bench.time_models([models[0], models[1], models[0]], FAST)
    assert len({s.n_runs for s in stats}) == 1  # round-robin: every model got the same number of samples


def test_fixed_batch_mismatch(tmp_path: Path) -> None:
    p = _conv_model(tmp_path / "fixed.onnx", 1, batch=1)
    bench.time_models([p], FAST)
    with pytest.raises(DeployforgeError, match="fixed batch"):
        bench.time_models([p], dataclasses.replace(FAST, batch=4))


def test_bootstrap_contains_point_estimate() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.gamma(5, 1, 31) + 2, rng.gamma(5, 1, 40) + 1
    lo, hi = bench.bootstrap_ratio_of_medians(a, b, seed=3)
    assert lo <= np.median(a) / np.median(b) <= hi
    assert (lo, hi) == bench.bootstrap_ratio_of_medians(a, b, seed=3)  # seeded: reproducible


def test_thread_warning() -> None:
    cores = bench.available_cores()
    assert cores >= 1
    assert bench.thread_warning(cores) is None
    assert bench.thread_warning(1, cores=1) is None
    w = bench.thread_warning(cores + 1)
    assert w is not None and str(cores + 1) in w
    assert bench.thread_warning(8, cores=4) is not None


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_invalid_threads(threads: object) -> None:
    with pytest.raises(InvalidSetting, match="thread count") as error:
        TimingProtocol(threads=threads)  # type: ignore[arg-type]
    assert error.value.setting == "threads"


@pytest.mark.parametrize(
    ("field", "value"), [("runs", 0), ("batch", 0), ("warmup_s", -0.1), ("min_time_s", float("nan"))]
)
def test_invalid_protocol(field: str, value: object) -> None:
    with pytest.raises(InvalidSetting) as error:
        TimingProtocol(**{field: value})
    assert error.value.setting == field


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DeployforgeError, match="no ONNX file"):
        bench.time_models([tmp_path / "missing.onnx"], FAST)
