"""The ``deployforge`` command line: exit codes, one-line errors, no leftovers, JSON on stdout, lazy imports.

One export of ``fastvit_t8`` at 64x64 (all targets) is shared by the verify, tamper and bench tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deployforge.cli.app import app

MODEL = "fastvit_t8"
SIZE = "64"
ARTIFACTS = (f"{MODEL}.onnx", f"{MODEL}.multibranch.onnx", f"{MODEL}.mlpackage", "reference.npz")

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def listing(directory: Path) -> list[str]:
    """Every entry of ``directory``, hidden ones included."""
    return sorted(os.listdir(directory))


def assert_usage_error(result, *words: str) -> str:
    """Exit 2, exactly one ``error: ...`` line on stderr naming the problem, nothing on stdout, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    message = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr).strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: "), message
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for word in words:
        assert word in message, (word, message)
    return message


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Output root holding ``fastvit_t8/`` exported once with ``--to all --multibranch --input-size 64``."""
    out = tmp_path_factory.mktemp("export")
    result = invoke("export", MODEL, "--to", "all", "--multibranch", "--input-size", SIZE, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out / MODEL}" in result.stdout
    return out


@pytest.fixture
def empty_out(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


# --- list and help -----------------------------------------------------------------------------------


def test_list_table_and_json():
    table = invoke("list")
    assert table.exit_code == 0, table.output
    assert MODEL in table.stdout

    result = invoke("list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert MODEL in [r["name"] for r in rows]
    assert all(isinstance(r["input_size"], int) and r["input_size"] > 0 for r in rows)

    fastvit = json.loads(invoke("list", "--family", "fastvit", "--json").stdout)
    assert {r["family"] for r in fastvit} == {"fastvit"}


def test_version():
    from deployforge import __version__

    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"deployforge {__version__}"


@pytest.mark.parametrize("command", [[], ["export"], ["verify"], ["bench"], ["list"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


# --- export and verify -------------------------------------------------------------------------------


def test_export_writes_artifacts_and_manifest(exported):
    from deployforge.manifest import artifact_digest

    directory = exported / MODEL
    assert sorted(listing(directory)) == sorted([*ARTIFACTS, "manifest.json"])
    assert listing(exported) == [MODEL]  # no staging or probe leftovers beside it
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["model"] == MODEL
    assert manifest["input"]["shape"][1:] == [3, 64, 64]
    assert set(manifest["artifacts"]) == set(ARTIFACTS)
    for name, digest in manifest["artifacts"].items():
        assert len(digest) == 64
        assert artifact_digest(directory / name) == digest


def test_the_multi_branch_onnx_is_written_only_when_asked_for(empty_out):
    result = invoke("export", MODEL, "--to", "onnx", "--input-size", SIZE, "--out", empty_out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert listing(empty_out / MODEL) == sorted([f"{MODEL}.onnx", "manifest.json", "reference.npz"])
    assert "onnx-multibranch" not in [row["stage"] for row in report["stages"]]
    assert report["size"]["params_onnx"] > 0 and report["size"]["params_onnx_multibranch"] is None


def test_the_multi_branch_onnx_needs_an_onnx_target(empty_out):
    result = invoke("export", MODEL, "--to", "coreml", "--multibranch", "--out", empty_out)
    assert_usage_error(result, "--multibranch", "needs an ONNX target", "--to onnx")
    assert listing(empty_out) == []


def test_export_records_the_runtime_graph(exported):
    from deployforge.manifest import read_manifest
    from deployforge.report import OnnxDetails

    manifest = read_manifest(exported / MODEL)
    (row,) = [r for r in manifest.stages if r.file == f"{MODEL}.onnx"]
    assert isinstance(row.details, OnnxDetails)
    graph = row.details.runtime_graph
    assert graph is not None and graph.nodes > 0
    assert graph.fused.get("com.microsoft.Gelu", 0) > 0 and graph.erf == 0  # GELUs fused by onnxruntime
    assert graph.warnings() == []


def test_export_warns_once_per_unfused_pattern(empty_out, monkeypatch):
    from deployforge import pipeline
    from deployforge.audit import GraphAudit

    monkeypatch.setattr(pipeline, "audit_onnx", lambda path: GraphAudit(nodes=10, erf=3, sigmoid_mul=2))
    result = invoke("export", MODEL, "--to", "onnx", "--input-size", SIZE, "--out", empty_out)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.stderr
    assert all(line.startswith(f"warning: {MODEL}.onnx: ") for line in warnings)


def test_verify_ok(exported):
    result = invoke("verify", exported)
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout


def test_verify_json_prints_only_json(exported):
    result = invoke("verify", exported / MODEL, "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)  # stdout is JSON and nothing else
    assert len(reports) == 1
    assert reports[0]["ok"] is True
    assert reports[0]["breaches"] == []
    assert {s["stage"] for s in reports[0]["stages"]} >= {"fuse", "reparameterize", "trace", "onnx"}


def _tamper_one_conv_weight(path: Path) -> str:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    name = next(n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers)
    tensor = initializers[name]
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += 1.0
    tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
    onnx.save(model, str(path))
    return name


def test_verify_detects_tampered_onnx(exported, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(exported, out)
    target = f"{MODEL}.onnx"
    _tamper_one_conv_weight(out / MODEL / target)

    result = invoke("verify", out / MODEL, "--json")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"error: verification failed for {MODEL}"
    (report,) = json.loads(result.stdout)
    assert report["ok"] is False
    assert any(b.startswith(f"{target}:") and "sha256" in b for b in report["breaches"])
    assert not any(b.startswith(f"{MODEL}.multibranch.onnx") for b in report["breaches"])
    # the recomputed numerics of the altered file fail too, not only its hash
    (onnx_stage,) = [s for s in report["stages"] if s.get("file") == target]
    assert onnx_stage["stage"] == "onnx"
    assert onnx_stage["parity"]["ok"] is False
    assert any(b.startswith("onnx: rel-L2") for b in report["breaches"])
    (multi_stage,) = [s for s in report["stages"] if s.get("file") == f"{MODEL}.multibranch.onnx"]
    assert multi_stage["parity"]["ok"] is True


def test_readme_flow_in_an_empty_directory(tmp_path, monkeypatch):
    """export --to coreml, verify, bench: typed in that order in an empty directory, each exits 0."""
    monkeypatch.chdir(tmp_path)
    exported = invoke("export", MODEL, "--to", "coreml", "--input-size", SIZE)
    assert exported.exit_code == 0, exported.output
    verified = invoke("verify")
    assert verified.exit_code == 0, verified.output
    quick = ("--runs", "3", "--warmup-s", "0", "--min-time-s", "0")
    benched = invoke("bench", "--threads", "1", *quick, "--json")
    assert benched.exit_code == 0, benched.output
    (row,) = json.loads(benched.stdout)
    assert row["model"] == MODEL and row["against"] == "multi-branch"
    assert "has no ONNX pair (deployed + multi-branch); building it in a scratch directory" in benched.stderr
    # bench exported the ONNX pair it needed into a scratch directory; the user's export is as it was
    assert listing(tmp_path) == ["deployforge-out"]
    assert listing(tmp_path / "deployforge-out" / MODEL) == [f"{MODEL}.mlpackage", "manifest.json", "reference.npz"]


# --- bad inputs: exit 2, one line naming the problem, nothing left behind ----------------------------


def test_unknown_model_suggests_close_names(empty_out):
    message = assert_usage_error(invoke("export", "fastvit_t9", "--out", empty_out), "fastvit_t9", MODEL)
    assert "did you mean" in message
    assert listing(empty_out) == []


def test_unknown_target(empty_out):
    assert_usage_error(invoke("export", MODEL, "--to", "tflite", "--out", empty_out), "--to", "tflite", "onnx")
    assert listing(empty_out) == []


def test_user_text_is_not_rich_markup(empty_out):
    assert_usage_error(invoke("export", MODEL, "--to", "[/bold]x", "--out", empty_out), "'[/bold]x'")
    assert listing(empty_out) == []


def test_unknown_precision(empty_out):
    assert_usage_error(
        invoke("export", MODEL, "--precision", "int8", "--out", empty_out), "--precision", "int8", "fp16", "fp32"
    )
    assert listing(empty_out) == []


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--input-size", "0"), ("--input-size", "16"), ("--opset", "12"), ("--opset", "99"), ("--batch", "0")],
)
def test_numeric_option_out_of_range(empty_out, flag, value):
    assert_usage_error(invoke("export", MODEL, flag, value, "--out", empty_out), flag, "at least", value)
    assert listing(empty_out) == []


def test_a_fixed_size_model_refuses_another_input_size(empty_out):
    result = invoke("export", "efficientformer_l1", "--input-size", "64", "--out", empty_out)
    assert_usage_error(result, "--input-size", "224x224 inputs only", "64")
    assert listing(empty_out) == []


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--runs", "0"),
        ("--warmup-s", "-1"),
        ("--warmup-s", "inf"),
        ("--min-time-s", "nan"),
        ("--threads", "100000"),
        ("--threads", "--1"),
        ("--threads", "²"),
    ],
)
def test_bench_numeric_option_out_of_range(empty_out, flag, value):
    assert_usage_error(invoke("bench", MODEL, f"{flag}={value}", "--out", empty_out), flag)
    assert listing(empty_out) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["export", MODEL, "--opset", "abc"], ["--opset", "export --help"]),
        (["export", MODEL, "--input-size", "1e3"], ["--input-size"]),
        (["export", MODEL, "--batch=--4"], ["--batch"]),
        (["export", MODEL, "--no-such-flag"], ["--no-such-flag"]),
        (["bench", "--runs", "many"], ["--runs"]),
        (["export"], ["Missing argument"]),
        (["nope"], ["No such command", "deployforge --help"]),
    ],
)
def test_wrong_type_or_unknown_flag_is_one_line(empty_out, args, words):
    assert_usage_error(invoke(*args, "--out", empty_out) if args[0] != "nope" else invoke(*args), *words)
    assert listing(empty_out) == []


def test_missing_weights_file(empty_out, tmp_path):
    missing = tmp_path / "nope.pth"
    assert_usage_error(invoke("export", MODEL, "--weights", missing, "--out", empty_out), "not found", "nope.pth")
    assert listing(empty_out) == []


def test_corrupt_weights_file(empty_out, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_usage_error(
        invoke("export", MODEL, "--weights", corrupt, "--out", empty_out, "--input-size", SIZE),
        "cannot read weights",
        "corrupt.pth",
    )
    assert listing(empty_out) == []


def test_wrong_architecture_weights(empty_out, tmp_path):
    import torch

    from deployforge.registry import get_spec

    other = tmp_path / "t12.pth"
    torch.save(get_spec("fastvit_t12").build().state_dict(), other)
    assert_usage_error(
        invoke("export", MODEL, "--weights", other, "--out", empty_out, "--input-size", SIZE),
        f"does not fit {MODEL}",
        "unexpected",
        "mismatched",
        "t12.pth",
    )
    assert listing(empty_out) == []


def test_unwritable_output_dir(tmp_path):
    if os.geteuid() != 0:
        parent = tmp_path / "readonly"
        parent.mkdir()
        parent.chmod(0o500)
        out = parent / "out"
    else:  # root ignores permission bits; a path under a regular file fails for everyone
        parent = tmp_path / "parent"
        parent.mkdir()
        (parent / "file.txt").write_text("not a directory")
        out = parent / "file.txt" / "out"
    before = listing(parent)
    try:
        assert_usage_error(
            invoke("export", MODEL, "--out", out, "--input-size", SIZE, "--to", "onnx"), "not writable", "--out"
        )
        assert listing(parent) == before
    finally:
        parent.chmod(0o700)


@pytest.mark.parametrize(("threads", "words"), [("0", ["--threads", "at least 1"]), ("abc", ["--threads", "abc"])])
def test_bench_bad_threads(empty_out, threads, words):
    assert_usage_error(invoke("bench", MODEL, "--threads", threads, "--out", empty_out), *words)
    assert listing(empty_out) == []


def test_manifest_round_trip(exported, tmp_path):
    from deployforge.manifest import read_manifest

    manifest = read_manifest(exported / MODEL)
    assert manifest.settings.input_size == 64 and manifest.input.size == 64
    assert manifest.weights.sha256 is None and manifest.size.params_onnx > 0
    manifest.write(tmp_path)
    assert read_manifest(tmp_path) == manifest


def test_previous_manifest_schema_is_refused(exported, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(exported, out)
    path = out / MODEL / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["schema"]  # deployforge 0.1.0 wrote no schema field
    path.write_text(json.dumps(manifest))
    message = assert_usage_error(invoke("verify", out / MODEL), "manifest schema", "re-run `deployforge export`")
    assert "None" not in message


def test_corrupt_manifest_is_named_as_such(exported, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(exported, out)
    path = out / MODEL / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["settings"]["opset"] = 99
    path.write_text(json.dumps(manifest))
    message = assert_usage_error(invoke("verify", out / MODEL), "malformed", "manifest.json")
    assert "--opset" not in message


def test_package_without_its_stage_fails_verification(exported, tmp_path):
    out = tmp_path / "nostage"
    shutil.copytree(exported, out)
    path = out / MODEL / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["stages"] = [row for row in manifest["stages"] if not row["stage"].startswith("coreml")]
    path.write_text(json.dumps(manifest))
    result = invoke("verify", out / MODEL, "--json")
    assert result.exit_code == 1, result.output
    (report,) = json.loads(result.stdout)
    assert any(b.startswith(f"{MODEL}.mlpackage:") and "no Core ML stage" in b for b in report["breaches"])


def test_a_file_in_the_way_of_the_model_directory(empty_out):
    (empty_out / MODEL).write_text("not a directory")
    assert_usage_error(
        invoke("export", MODEL, "--to", "onnx", "--input-size", SIZE, "--out", empty_out), "in the way", MODEL
    )
    assert listing(empty_out) == [MODEL]
    assert (empty_out / MODEL).read_text() == "not a directory"


def test_fixed_batch_above_the_parity_batch(tmp_path):
    out = tmp_path / "out"
    exported = invoke("export", MODEL, "--to", "onnx", "--batch", "12", "--input-size", SIZE, "--out", out)
    assert exported.exit_code == 0, exported.output
    import onnx

    graph = onnx.load(str(out / MODEL / f"{MODEL}.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 12
    verified = invoke("verify", out)
    assert verified.exit_code == 0, verified.output
    benched = invoke("bench", "--out", out, "--runs", "2", "--warmup-s", "0", "--min-time-s", "0", "--json")
    assert benched.exit_code == 0, benched.output
    (row,) = json.loads(benched.stdout)
    assert row["deployed"]["batch"] == row["baseline"]["batch"] == 12


def test_verify_and_bench_resolve_targets_alike(exported, empty_out):
    from deployforge.options import ExportSettings
    from deployforge.workspace import Scratch, has_onnx_pair, resolve_model_dirs

    needs_onnx = Scratch(empty_out, ExportSettings(target="onnx"), has_onnx_pair)
    by_dir = resolve_model_dirs([str(exported)], empty_out)
    by_name = resolve_model_dirs([MODEL], exported)
    by_default = resolve_model_dirs([], exported, needs_onnx)
    assert by_dir == by_name == by_default == [exported / MODEL]
    assert listing(empty_out) == []  # the exports were usable: nothing was exported again
    message = assert_usage_error(invoke("verify", MODEL, "--out", empty_out), "no artifacts for", MODEL)
    assert "deployforge export" in message


def test_verify_dir_without_artifacts(empty_out, tmp_path):
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert_usage_error(invoke("verify", nothing, "--out", empty_out), "no exported artifacts", "manifest.json")
    assert listing(nothing) == []
    assert listing(empty_out) == []


# --- interrupted export ------------------------------------------------------------------------------


def test_interrupted_export_leaves_nothing(empty_out, monkeypatch):
    from deployforge import pipeline

    calls = []

    def save_then_interrupt(model, path):
        calls.append(Path(path))
        Path(path).write_bytes(model.SerializeToString()[:1000])  # half-written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.onnx_export, "save_onnx", save_then_interrupt)
    result = invoke("export", MODEL, "--to", "onnx", "--input-size", SIZE, "--out", empty_out)
    assert result.exit_code == 130, (result.output, result.exception)
    assert [p.name for p in calls] == [f"{MODEL}.onnx"]
    assert calls[0].parent.parent.parent == empty_out  # it was writing in a staging dir inside --out
    assert "interrupted" in result.stderr
    assert "Traceback" not in result.output
    assert listing(empty_out) == []


# --- weights round trip against timm -----------------------------------------------------------------


def test_weights_round_trip_matches_timm(tmp_path):
    import onnxruntime as ort
    import timm
    import torch
    from safetensors.torch import save_file

    from deployforge.stress import stress_weights

    torch.manual_seed(0)
    reference = stress_weights(timm.create_model(MODEL, pretrained=False), seed=3).eval()
    weights = tmp_path / "stressed.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in reference.state_dict().items()}, str(weights))

    out = tmp_path / "out"
    result = invoke("export", MODEL, "--weights", weights, "--input-size", SIZE, "--to", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MODEL / "manifest.json").read_text())
    assert manifest["weights"]["source"] == str(weights.resolve())
    assert manifest["weights"]["sha256"] is not None

    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = reference(image).numpy()
    session = ort.InferenceSession(str(out / MODEL / f"{MODEL}.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: image.numpy()})[0]
    rel_l2 = np.linalg.norm((got - expected).astype(np.float64)) / np.linalg.norm(expected.astype(np.float64))
    assert rel_l2 <= 1e-5, rel_l2


# --- bench -------------------------------------------------------------------------------------------


def test_bench_json(exported):
    result = invoke(
        "bench",
        exported / MODEL,
        "--threads",
        "1,2",
        "--runs",
        "5",
        "--warmup-s",
        "0.05",
        "--min-time-s",
        "0.1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["threads"] for r in rows] == [1, 2]
    for row in rows:
        assert row["model"] == MODEL
        assert row["speedup"] > 0
        low, high = row["speedup_ci95"]
        assert 0 < low <= high
        assert row["against"] == "multi-branch"
        for side in ("baseline", "deployed"):
            assert row[side]["p50_ms"] > 0


# --- the installed console script, in a real process -------------------------------------------------


def _console_script() -> str:
    found = shutil.which("deployforge") or str(Path(sys.executable).parent / "deployforge")
    assert Path(found).is_file(), found
    return found


def test_console_script_subprocess(tmp_path):
    script = _console_script()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    listed = subprocess.run([script, "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert MODEL in [r["name"] for r in json.loads(listed.stdout)]

    out = tmp_path / "out"
    out.mkdir()
    bad = subprocess.run(
        [script, "export", "nope", "--out", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope'"), bad.stderr
    assert listing(out) == []

    lazy = subprocess.run(
        [sys.executable, "-c", "import deployforge.cli.app, sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert lazy.returncode == 0, lazy.stderr
    assert lazy.stdout.strip() == "False"


# --------------------------------------------------------------------------------- several models at once


def test_several_models_export_in_one_command(empty_out):
    result = invoke("export", "mobileone_s0", "mobilevit_xxs", "--to", "onnx", "--input-size", SIZE, "--out", empty_out)
    assert result.exit_code == 0, result.output
    assert listing(empty_out) == ["mobileone_s0", "mobilevit_xxs"]
    for name in ("mobileone_s0", "mobilevit_xxs"):
        assert (empty_out / name / "manifest.json").is_file()
        assert f"wrote {empty_out / name}/" in result.stdout


def test_several_models_json_is_a_list_in_order(empty_out):
    result = invoke(
        "export", "mobileone_s0", "mobilevit_xxs", "--to", "onnx", "--input-size", SIZE, "--out", empty_out, "--json"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["model"] for row in rows] == ["mobileone_s0", "mobilevit_xxs"]


def test_an_unknown_name_among_several_exports_nothing(empty_out):
    message = assert_usage_error(invoke("export", "mobileone_s0", "nope", "--out", empty_out), "unknown model 'nope'")
    assert "did you mean" in message or "deployforge list" in message
    assert listing(empty_out) == []


def test_one_checkpoint_for_several_models_is_refused(empty_out, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    result = invoke("export", "mobileone_s0", "mobilevit_xxs", "--weights", weights, "--out", empty_out)
    assert_usage_error(result, "--weights", "one model")
    assert listing(empty_out) == []
