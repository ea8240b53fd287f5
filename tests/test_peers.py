"""The peer baseline: every baseline is checked to compute what ours computes before it is timed.

Structure only, never which graph is faster.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from deployforge import benchmark, peers
from deployforge.cli.app import app
from deployforge.errors import DeployforgeError
from deployforge.options import Baseline
from deployforge.registry import get_spec

MODEL = "fastvit_t8"


def _conv_model(path: Path) -> Path:
    """One 3x3 conv with bias, 8 channels, 16x16, dynamic batch."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1, "w")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _scaled(source: Path, path: Path, factor: float) -> Path:
    """A copy of ``source`` with every weight multiplied by ``factor`` (a perturbed export)."""
    model = onnx.load(str(source))
    for i, init in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _conv_model(tmp_path_factory.mktemp("peers") / "ours.onnx")


@pytest.mark.parametrize(("factor", "agrees"), [(1.0, True), (1 + 1e-6, True), (1 + 3e-5, False), (1.01, False)])
def test_check_refuses_a_baseline_that_disagrees(ours: Path, tmp_path: Path, factor: float, agrees: bool) -> None:
    graph = benchmark.BaselineGraph(Baseline.TIMM, _scaled(ours, tmp_path / "peer.onnx", factor))
    if agrees:
        (checked,) = benchmark.check_baselines(ours, [graph])
        assert checked.rel_l2 is not None and checked.rel_l2 <= 1e-5
        return
    with pytest.raises(benchmark.BaselineDisagrees, match="timm baseline peer.onnx .* disagree") as error:
        benchmark.check_baselines(ours, [graph])
    assert error.value.exit_code == 1  # a parity failure


def test_a_disagreeing_baseline_is_never_timed(ours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployforge.measure import SizeReport

    def no_timing(*args, **kwargs):
        raise AssertionError("timed a baseline that computes another function")

    monkeypatch.setattr(benchmark, "time_models", no_timing)
    good = benchmark.BaselineGraph(Baseline.MULTI_BRANCH, ours)
    bad = benchmark.BaselineGraph(Baseline.TIMM_DYNAMO, _scaled(ours, tmp_path / "bad.onnx", 1.001))
    size = SizeReport(0, 0, 0, 0, 0.0, 0.0, macs_onnx=1)
    with pytest.raises(benchmark.BaselineDisagrees, match="timm-dynamo"):
        benchmark.bench_rows("toy", size, ours, [good, bad], [benchmark.TimingProtocol()])


def test_check_on_given_inputs(ours: Path) -> None:
    inputs = np.random.default_rng(3).standard_normal((3, 8, 16, 16)).astype(np.float32)
    (checked,) = benchmark.check_baselines(ours, [benchmark.BaselineGraph(Baseline.TIMM, ours)], inputs)
    assert checked.rel_l2 == 0.0


def test_a_failed_peer_export_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported operator\nlong traceback text")

    monkeypatch.setattr(peers, "export_timm_reparameterized", broken)
    with pytest.raises(DeployforgeError, match=r"timm's dynamo ONNX export failed \(Unsupported operator\)$"):
        peers._export_peer(None, get_spec(MODEL), 64, tmp_path / "x.onnx", 18, peers.PeerExporter.DYNAMO)


def test_bench_against_timm_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench --against timm --peak``: timm's two exports and our multi-branch, checked, timed with ours in one run.

    Exported at 64x64 instead of the published 256 to keep the test short (the CLI has no input-size flag).
    """
    monkeypatch.setattr(peers, "prepare_timm_peer", functools.partial(peers.prepare_timm_peer, input_size=64))
    quick = ("--runs", "3", "--warmup-s", "0", "--min-time-s", "0")
    result = CliRunner().invoke(
        app, ["bench", MODEL, "--against", "timm", "--threads", "1", *quick, "--peak", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    (peak,) = payload["peak"]
    assert peak["threads"] == 1 and peak["gflops"] > 0
    rows = payload["rows"]
    assert [r["against"] for r in rows] == ["timm", "timm-dynamo", "multi-branch"]
    for row in rows:
        assert row["model"] == MODEL and row["threads"] == 1
        assert row["rel_l2"] is not None and row["rel_l2"] <= 1e-5
        assert row["interleaved"] == 4
        assert row["speedup"] > 0 and 0 < row["speedup_ci95"][0] <= row["speedup_ci95"][1]
        assert row["deployed"]["peak_gflops"] == peak["gflops"] and row["deployed"]["peak_fraction"] > 0
        assert row["baseline"]["n_runs"] == row["deployed"]["n_runs"]
    assert len({json.dumps(r["deployed"]) for r in rows}) == 1  # one run: the same timings of ours in every row
