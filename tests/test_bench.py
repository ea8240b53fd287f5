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

from deployforge import benchmark
from deployforge.errors import DeployforgeError, InvalidSetting
from deployforge.options import Against, Baseline, TimingProtocol

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


def _check_stats(s: benchmark.LatencyStats, runs: int, batch: int) -> None:
    assert 0 < s.p50_ms <= s.p90_ms <= s.p99_ms
    assert s.mean_ms > 0 and s.std_ms >= 0
    assert s.n_runs >= runs and len(s.samples_ms) == s.n_runs
    assert s.n_runs <= benchmark.MAX_RUNS_FACTOR * runs
    assert s.batch == batch
    assert math.isclose(s.throughput, batch * 1000.0 / s.p50_ms)


def test_bench_pair(models: tuple[Path, Path]) -> None:
    multi, reparam = models
    r = benchmark.bench_pair(multi, reparam, FAST, macs_baseline=2 * 8 * 8 * 9 * 256, macs_deployed=None)
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
    assert d["interleaved"] == 2 and d["deployed"]["peak_fraction"] is None


def test_bench_interleaved_n_way(models: tuple[Path, Path]) -> None:
    """Every baseline and ours are timed in one run: same sample count, one ratio per baseline, ours shared."""
    multi, reparam = models
    pairs = benchmark.bench_interleaved(reparam, [multi, reparam, multi], FAST, macs_deployed=1000, macs_baselines=None)
    assert len(pairs) == 3
    assert len({id(p.deployed) for p in pairs}) == 1  # one record of ours, shared by every ratio
    assert len({p.baseline.n_runs for p in pairs} | {pairs[0].deployed.n_runs}) == 1
    for pair in pairs:
        _check_stats(pair.baseline, 10, 1)
        assert pair.interleaved == 4 and pair.threads == 1
        assert math.isclose(pair.speedup, pair.baseline.p50_ms / pair.deployed.p50_ms)
        low, high = pair.speedup_ci
        assert 0 < low <= pair.speedup <= high
    with pytest.raises(DeployforgeError, match="at least one baseline"):
        benchmark.bench_interleaved(reparam, [], FAST)


def test_bench_rows_one_row_per_baseline_and_thread_count(models: tuple[Path, Path]) -> None:
    from deployforge.measure import SizeReport

    _, reparam = models
    size = SizeReport(0, 0, 0, 0, 0.0, 0.0, params_onnx=576, macs_onnx=8 * 8 * 9 * 256)
    graphs = [benchmark.BaselineGraph(Baseline.TIMM, reparam), benchmark.BaselineGraph(Baseline.MULTI_BRANCH, reparam)]
    peak = benchmark.Peak(64, benchmark.LatencyStats.from_samples([1.0], threads=1, macs=64**3))
    protocols = [FAST, dataclasses.replace(FAST, threads=2)]
    rows = benchmark.bench_rows("toy", size, reparam, graphs, protocols, peaks=[peak])
    assert [(r.pair.threads, r.against) for r in rows] == [(t, b.baseline) for t in (1, 2) for b in graphs]
    assert all(r.rel_l2 is not None and r.rel_l2 <= 1e-5 for r in rows)  # checked before timing
    assert rows[0].pair.deployed is rows[1].pair.deployed  # the two baselines of one run share ours
    ours = rows[0].pair.deployed
    assert ours.peak_gflops == peak.gflops and math.isclose(ours.peak_fraction, ours.gflops / peak.gflops)
    assert rows[2].pair.deployed.peak_gflops is None  # no peak measured at 2 threads
    d = json.loads(json.dumps(rows[0].as_dict()))
    assert d["against"] == "timm" and d["deployed"]["peak_gflops"] == peak.gflops
    assert {"model", "against", "baseline", "deployed", "speedup", "speedup_ci95", "rel_l2"} <= set(d)


def test_against_timm_times_three_baselines() -> None:
    assert Against.MULTI_BRANCH.baselines == (Baseline.MULTI_BRANCH,)
    assert Against.TIMM.baselines == (Baseline.TIMM, Baseline.TIMM_DYNAMO, Baseline.MULTI_BRANCH)


def test_measure_peak() -> None:
    peak = benchmark.measure_peak(dataclasses.replace(FAST, runs=3, min_time_s=0), size=128)
    assert peak.gflops > 0 and peak.size == 128 and peak.threads == 1
    assert peak.stats.n_runs >= 3 and peak.stats.macs == 128**3
    assert math.isclose(peak.gflops, 2 * 128**3 / (peak.stats.p50_ms * 1e-3) / 1e9)
    assert json.loads(json.dumps(peak.as_dict()))["gflops"] == peak.gflops
    with pytest.raises(InvalidSetting) as error:
        benchmark.measure_peak(FAST, size=8)
    assert error.value.setting == "peak_size"


def test_time_models_dynamic_batch(models: tuple[Path, Path]) -> None:
    (s,) = benchmark.time_models([models[1]], dataclasses.replace(FAST, batch=2), macs=[1000])
    _check_stats(s, 10, 2)
    assert s.threads == 1 and s.macs == 1000 and s.gflops is not None
    json.dumps(s.as_dict())


def test_time_models_interleaves_every_model(models: tuple[Path, Path]) -> None:
    stats = benchmark.time_models([models[0], models[1], models[0]], FAST)
    assert len({s.n_runs for s in stats}) == 1  # round-robin: every model got the same number of samples


def test_fixed_batch_mismatch(tmp_path: Path) -> None:
    p = _conv_model(tmp_path / "fixed.onnx", 1, batch=1)
    benchmark.time_models([p], FAST)
    with pytest.raises(DeployforgeError, match="fixed batch"):
        benchmark.time_models([p], dataclasses.replace(FAST, batch=4))


def test_bootstrap_contains_point_estimate() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.gamma(5, 1, 31) + 2, rng.gamma(5, 1, 40) + 1
    lo, hi = benchmark.bootstrap_ratio_of_medians(a, b, seed=3)
    assert lo <= np.median(a) / np.median(b) <= hi
    assert (lo, hi) == benchmark.bootstrap_ratio_of_medians(a, b, seed=3)  # seeded: reproducible


def test_thread_warning() -> None:
    cores = benchmark.available_cores()
    assert cores >= 1
    assert benchmark.thread_warning(cores) is None
    assert benchmark.thread_warning(1, cores=1) is None
    w = benchmark.thread_warning(cores + 1)
    assert w is not None and str(cores + 1) in w
    assert benchmark.thread_warning(8, cores=4) is not None


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
        benchmark.time_models([tmp_path / "missing.onnx"], FAST)


def test_bench_peak_only_cli(tmp_path: Path) -> None:
    """``bench --peak`` with nothing exported under --out measures the peak alone (exit 0)."""
    from typer.testing import CliRunner

    from deployforge.cli.app import app

    quick = ["--runs", "2", "--warmup-s", "0", "--min-time-s", "0"]
    args = ["bench", "--peak", "--threads", "1", *quick, "--out", str(tmp_path / "none"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["rows"] == [] and payload["peak"][0]["gflops"] > 0
    assert "peak only" in result.stderr


def _zoo_script():
    """benchmarks/zoo.py, loaded as a module (it is a script, not part of the package)."""
    import importlib.util
    import sys

    name = "benchmarks_zoo"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their annotations through it
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_zoo_outputs_from_fake_rows(tmp_path: Path) -> None:
    """The zoo writes its CSV (read back unchanged), its markdown with verdicts and both PNG plots."""
    pytest.importorskip("matplotlib")
    zoo = _zoo_script()

    def row(family: str, model: str, threads: int, peer: float, multi: float) -> object:
        ratios = {
            Baseline.TIMM: zoo.Ratio(10.0 * peer, peer, peer - 0.02, peer + 0.02),
            Baseline.TIMM_DYNAMO: zoo.Ratio(12.0, 1.2, 1.1, 1.3),
            Baseline.MULTI_BRANCH: zoo.Ratio(10.0 * multi, multi, multi - 0.01, multi + 0.01),
        }
        return zoo.ZooRow(family, model, threads, 18, 4.0, 0.685, 10.0, 11.0, 137.0, 200.0, 3e-7, 50, "now", ratios)

    rows = [
        row("fastvit", "fastvit_t8", 1, 1.06, 1.15),
        row("fastvit", "fastvit_t8", 2, 1.00, 1.25),
        row("mobileone", "mobileone_s0", 1, 0.90, 3.0),
    ]
    written = zoo.write_outputs(rows, tmp_path, FAST, {"mobilevit_xs": "timm missing"}, ["a note"])
    assert [p.name for p in written] == ["zoo.csv", "zoo.md", "zoo_latency_vs_macs.png", "zoo_speedup_vs_peer.png"]
    for png in written[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert zoo.read_rows(tmp_path / "zoo.csv") == zoo.registry_order(rows)
    md = (tmp_path / "zoo.md").read_text()
    assert "fastvit_t8 @ 2 thread(s): 1.250 [1.240, 1.260] → met" in md  # reparam vs multi-branch ≥ 1.2
    assert "mobileone_s0 @ 1 thread(s): 0.900 [0.880, 0.920] → missed" in md  # ours slower than the peer
    assert "fastvit_t8 @ 1 thread(s): 1.060 [1.040, 1.080] → within noise" in md  # ≥ 1/0.95 only at its point
    assert "mobilevit_xs: timm missing" in md and "68.5" in md  # the % of peak: 137 / 200
