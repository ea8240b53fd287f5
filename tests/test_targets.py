"""Targets as a protocol: every registered one implements it; the pipeline, ``verify`` and ``bench`` find them only
through the registry (a sixth target, ``tests/sixth_target.py``, is one module and one registration); ``--to``
takes lists; a missing runtime is a one-line error before anything is built; ONNX Runtime Mobile's ``.ort``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

import deployforge
from deployforge.cli.app import app
from deployforge.errors import InvalidSetting
from deployforge.manifest import artifact_digest, read_manifest
from deployforge.options import ExportSettings, TimingProtocol, parse_targets
from deployforge.report import RuntimeDetails
from deployforge.targets import REGISTERED, get_target
from deployforge.targets.protocol import Target

MODEL = "mobileone_s0"
SIZE = 64
# the import that fails without each extra, and the extra it names
EXTRAS = {"executorch": ("executorch", "executorch"), "litert": ("litert_torch", "litert"), "ncnn": ("ncnn", "ncnn")}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line(text: str) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("name", list(REGISTERED))
def test_every_registered_target_implements_the_protocol(name):
    target = get_target(name)
    assert isinstance(target, Target)
    assert target.name == name
    assert target.files("m")[0].startswith("m.")
    assert all(isinstance(rewrite, str) for rewrite in target.rewrites)


def test_to_takes_a_name_all_or_a_list():
    assert parse_targets("all") == ("onnx", "coreml")
    assert parse_targets("onnx,executorch") == ("onnx", "executorch")
    assert parse_targets(" ncnn , all , ncnn") == ("ncnn", "onnx", "coreml")
    assert ExportSettings(target="litert").targets == ("litert",)
    with pytest.raises(InvalidSetting, match="unknown export target 'tflite'.*ncnn"):
        parse_targets("onnx,tflite")


def test_an_unknown_target_is_a_one_line_usage_error(tmp_path):
    result = invoke("export", MODEL, "--to", "onnx,tensorrt", "--out", tmp_path)
    assert result.exit_code == 2
    assert one_line(result.stderr).startswith("error: --to: unknown export target 'tensorrt'")
    assert list(tmp_path.iterdir()) == []


def hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` and every module under it fail to import, whatever this process imported before.

    ``sys.modules[package] = None`` alone does not hide a submodule another test already imported:
    ``importlib.import_module("package.sub")`` finds ``package.sub`` in ``sys.modules`` and never looks at
    ``package`` (ExecuTorch's ``require`` imports its submodules so).
    """
    for name in [package, *(name for name in sys.modules if name.startswith(f"{package}."))]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError


@pytest.mark.parametrize("name", list(EXTRAS))
def test_a_missing_runtime_names_its_extra_before_anything_is_built(name, tmp_path, monkeypatch):
    module, extra = EXTRAS[name]
    hide_package(monkeypatch, module)
    result = invoke("export", MODEL, "--to", f"onnx,{name}", "--out", tmp_path / "out", "--input-size", SIZE)
    assert result.exit_code == 2, result.output
    message = one_line(result.stderr)
    assert f"pip install 'deployforge[{extra}]'" in message, message
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_rewrite_no_chosen_target_offers_is_refused(tmp_path):
    result = invoke("export", MODEL, "--to", "onnx", "--rewrite", "fold-everything", "--out", tmp_path)
    assert result.exit_code == 2
    assert "no target of this export offers the rewrite 'fold-everything'" in one_line(result.stderr)


@pytest.fixture(scope="module")
def sixth(tmp_path_factory):
    """An export of MODEL to ONNX and the unregistered TorchScript target, registered for this module only."""
    tests = str(Path(__file__).parent)
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(tests)
    patch.setitem(REGISTERED, "torchscript", "sixth_target")
    out = tmp_path_factory.mktemp("sixth")
    report = deployforge.export(MODEL, to="onnx,torchscript", input_size=SIZE, out=out)
    yield report
    patch.undo()


def test_a_sixth_target_is_exported_and_proven_through_the_registry_alone(sixth):
    assert sixth.ok, sixth.breaches
    row = next(r for r in sixth.stages if r.stage == "torchscript")
    assert isinstance(row.details, RuntimeDetails)
    assert row.file == f"{MODEL}.pt"
    assert row.parity.rel_l2 <= 1e-5
    assert row.details.input_shape == (1, 3, SIZE, SIZE)
    assert row.details.artifact.ops  # described by the target, read back from the file
    assert f"{MODEL}.pt" in read_manifest(sixth.directory).artifacts


def test_a_sixth_target_is_verified_and_its_tampering_caught(sixth, tmp_path):
    verification = deployforge.verify(sixth.directory)
    (report,) = verification.reports
    assert report.ok, report.breaches
    assert "torchscript" in [r.stage for r in report.stages]

    copy = tmp_path / MODEL
    shutil.copytree(sixth.directory, copy)
    module = torch.jit.load(str(copy / f"{MODEL}.pt"))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(1.5)
            break
    torch.jit.save(module, str(copy / f"{MODEL}.pt"))
    _rehash(copy, f"{MODEL}.pt")  # the numbers, not the hash, must catch it
    (tampered,) = deployforge.verify(copy).reports
    assert not tampered.ok
    assert any(b.startswith("torchscript") for b in tampered.breaches), tampered.breaches


def test_a_sixth_target_is_benched_beside_onnxruntime(sixth):
    report = deployforge.bench(
        sixth.directory,
        runtimes=["onnxruntime", "torchscript"],
        protocol=TimingProtocol(runs=5, warmup_s=0.0, min_time_s=0.0),
    )
    rows = report.runtimes.rows
    assert [r.runtime for r in rows] == ["onnxruntime", "torchscript"]
    assert rows[0].ratio == 1.0
    assert rows[1].ratio > 0 and rows[1].ratio_ci[0] <= rows[1].ratio <= rows[1].ratio_ci[1]
    assert rows[1].rel_l2 <= 1e-5
    assert all(r.stats.n_runs >= 5 and r.stats.gflops > 0 for r in rows)
    assert "not phone latencies" in report.runtimes.disclaimer


def _rehash(directory: Path, name: str) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"][name] = artifact_digest(directory / name)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="module")
def ort_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("ort")
    result = invoke("export", MODEL, "--to", "onnx,ort", "--input-size", SIZE, "--out", out)
    assert result.exit_code == 0, result.output
    return out / MODEL


def test_ort_writes_the_mobile_format_and_its_operator_config(ort_export):
    config = (ort_export / f"{MODEL}.required_operators.config").read_text()
    assert re.search(r"^(ai\.onnx|com\.microsoft);\d+;.*Conv", config, re.MULTILINE), config
    assert "deployforge-ort-" not in config  # no scratch path leaks into the shipped file
    manifest = read_manifest(ort_export)
    row = next(r for r in manifest.stages if r.stage == "ort")
    assert row.parity.rel_l2 <= 1e-5
    assert row.details.artifact.inputs == {"image": (1, 3, SIZE, SIZE)}
    assert {f"{MODEL}.ort", f"{MODEL}.required_operators.config"} <= set(manifest.artifacts)
    # the .ort file agrees with the .onnx it was converted from on the same input
    inputs = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    ours = get_target("ort").load(ort_export / f"{MODEL}.ort")(inputs)
    onnx_out = get_target("onnx").load(ort_export / f"{MODEL}.onnx")(inputs)
    assert np.linalg.norm(ours - onnx_out) / np.linalg.norm(onnx_out) <= 1e-6


def test_a_tampered_ort_file_fails_verify(ort_export, tmp_path):
    copy = tmp_path / MODEL
    shutil.copytree(ort_export, copy)
    graph = onnx.load(str(copy / f"{MODEL}.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    raw = numpy_helper.to_array(weight).astype(np.float32).tobytes()
    data = (copy / f"{MODEL}.ort").read_bytes()
    at = data.find(raw)
    assert at >= 0, "the largest weight is not stored as it is in the .ort file"
    scaled = (np.frombuffer(raw, dtype=np.float32) * 1.5).astype(np.float32).tobytes()
    (copy / f"{MODEL}.ort").write_bytes(data[:at] + scaled + data[at + len(raw) :])
    _rehash(copy, f"{MODEL}.ort")
    result = invoke("verify", copy)
    assert result.exit_code == 1, result.output
    assert re.search(r"│ ort .*✗", result.output), result.output


def _scale_middle_floats(path: Path) -> None:
    """Scale 4096 float32 values a third of the way into an ncnn ``.bin`` (its zero type tags stay zero)."""
    floats = np.fromfile(path, dtype=np.float32)
    floats[len(floats) // 3 : len(floats) // 3 + 4096] *= 1.5
    floats.tofile(path)


def _tamper_runtime_artifact(target: str, path: Path) -> None:
    """Change the weights inside ``path`` (a target's artifact) while keeping the file loadable."""
    from test_target_executorch import _tamper  # tests/ is on sys.path, as test_locate imports test_cli
    from test_target_litert import _flip_first_weight

    if target == "executorch":
        _tamper(path, path)
    elif target == "litert":
        _flip_first_weight(path)
    else:
        _scale_middle_floats(path)


@pytest.fixture(scope="module")
def runtimes_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("runtimes")
    report = deployforge.export(MODEL, to="executorch,litert,ncnn", input_size=SIZE, out=out)
    assert report.ok, report.breaches
    return report.directory


@pytest.mark.parametrize("target", ["executorch", "litert", "ncnn"])
def test_verify_reruns_each_runtime_artifact_and_catches_tampering(target, runtimes_export, tmp_path):
    (intact,) = deployforge.verify(runtimes_export).reports
    assert intact.ok, intact.breaches
    assert target in [r.stage for r in intact.stages]

    copy = tmp_path / MODEL
    shutil.copytree(runtimes_export, copy)
    artifact, *_ = files = get_target(target).files(MODEL)
    weights = copy / files[-1]  # .pte, .tflite, or ncnn's .bin (the .param is the artifact breaches name)
    _tamper_runtime_artifact(target, weights)
    (by_hash,) = deployforge.verify(copy).reports
    assert not by_hash.ok and any(weights.name in b for b in by_hash.breaches), by_hash.breaches

    _rehash(copy, weights.name)  # the runtime's numbers, not the hash, must catch it now
    (by_numbers,) = deployforge.verify(copy).reports
    assert not by_numbers.ok
    assert any(b.startswith(f"{target}:") and artifact in b for b in by_numbers.breaches), by_numbers.breaches
