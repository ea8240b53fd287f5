"""``deployforge verify --locate``: the first layer where an artifact departs from the original, by module path.

Each family is exported once at 64x64 (FastViT with its Core ML package, FP16). A fault is planted after
export by scaling one module's weights by 1.5, inside the ONNX initializers or the package's weight blob;
``--locate`` must name that module (or the innermost module around it whose output survives fuse and
reparameterize) as the first departing layer of that artifact, every layer before it must still agree with the
original, and the other artifacts must not depart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_cli import assert_usage_error  # tests/ is on sys.path (pytest's rootdir-less prepend import mode)
from typer.testing import CliRunner

from deployforge import locate as locate_module
from deployforge.cli.app import app
from deployforge.locate import LocateUnavailable, node_scopes, onnx_module_values
from deployforge.options import ExportSettings, Target
from deployforge.pipeline import export
from deployforge.registry import get_spec

runner = CliRunner()
COREML_MODEL = "fastvit_t8"

# family → (module whose weights are scaled after export, the module --locate must report first)
FAULTS = {
    "fastvit_t8": ("stages.2.blocks.1.token_mixer.reparam_conv", "stages.2.blocks.1.token_mixer"),
    "mobilevit_xxs": ("stages.3.1.transformer.1.attn.qkv", "stages.3.1.transformer.1.attn.qkv"),
}
# the transformer family's cases export a second model: marked slow
FAMILIES = [pytest.param(name, marks=pytest.mark.slow) if name != COREML_MODEL else name for name in FAULTS]
# planted in FastViT's Core ML package, in another block than its ONNX fault
PACKAGE_FAULT = ("stages.1.blocks.0.token_mixer.reparam_conv", "stages.1.blocks.0.token_mixer")


def locate(target: Path | str, out: Path, *extra: str):
    return runner.invoke(app, ["verify", "--locate", str(target), "--out", str(out), *extra])


class _Exports(dict):
    """``exports[model]``: the output root of ``model`` exported at 64x64 (FastViT: all targets), made on first use."""

    def __init__(self, tmp_path_factory) -> None:
        super().__init__()
        self.factory = tmp_path_factory

    def __missing__(self, name: str) -> Path:
        out = self.factory.mktemp(name)
        target = Target.ALL if name == COREML_MODEL else Target.ONNX
        report = export(get_spec(name), ExportSettings(target=target, input_size=64, multibranch=True), out=out)
        assert report.ok, report.breaches
        self[name] = out
        return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> _Exports:
    return _Exports(tmp_path_factory)


def plant_fault(onnx_path: Path, module: str, factor: float = 1.5) -> str:
    """Scale the weight (the largest initializer) read by ``module``'s own nodes; return the initializer's name."""
    model = onnx.load(onnx_path)
    read = {name for node in model.graph.node if node_scopes(node)[-1:] == (module,) for name in node.input}
    weights = [t for t in model.graph.initializer if t.name in read and len(t.dims) >= 2]
    assert weights, f"no weight initializer read by {module}"
    weight = max(weights, key=lambda t: np.prod(t.dims))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(factor), weight.name))
    onnx.save(model, onnx_path)
    return weight.name


def plant_package_fault(package: Path, module: str, factor: float = 1.5) -> str:
    """Scale, inside the weight blob of an ``.mlpackage``, the conv weight constant of ``module``; return its name."""
    from coremltools.proto import Model_pb2

    from deployforge.mlprogram import WeightFile
    from deployforge.mlprogram.program import model_spec_path

    spec = Model_pb2.Model()
    spec.ParseFromString(model_spec_path(package).read_bytes())
    main = spec.mlProgram.functions["main"]
    prefix = "p_" + module.replace(".", "_") + "_weight"
    (op,) = [
        op
        for op in main.block_specializations[main.opset].operations
        if op.type == "const" and op.outputs[0].name.startswith(prefix)
    ]
    value = op.attributes["val"].blobFileValue
    weights = package / "Data" / "com.apple.CoreML" / "weights" / value.fileName.split("/")[-1]
    blob = WeightFile(weights).blobs[int(value.offset)]
    data = bytearray(weights.read_bytes())
    window = slice(blob.data_offset, blob.data_offset + blob.size)
    scaled = np.frombuffer(bytes(data[window]), dtype=blob.dtype) * factor
    data[window] = scaled.astype(blob.dtype).tobytes()
    weights.write_bytes(bytes(data))
    return op.outputs[0].name


def faulted_copy(exports: dict[str, Path], name: str, out: Path) -> Path:
    """A copy of ``name``'s export under ``out`` with :data:`FAULTS`' ONNX fault (and :data:`PACKAGE_FAULT`)."""
    shutil.copytree(exports[name] / name, out / name)
    plant_fault(out / name / f"{name}.onnx", FAULTS[name][0])
    if name == COREML_MODEL:
        constant = plant_package_fault(out / name / f"{name}.mlpackage", PACKAGE_FAULT[0])
        assert constant.endswith("_to_fp16"), constant  # an FP16 program: judged at the FP16 bound
    return out


def by_file(payload: dict) -> dict[str, dict]:
    return {artifact["file"]: artifact for artifact in payload["artifacts"]}


def assert_execution_order(modules: list[str]) -> None:
    """A module is listed after every module inside it (it completes after them), stages in index order."""
    position = {module: i for i, module in enumerate(modules)}
    for module, i in position.items():
        inner = [m for m in modules if m != module and (module == "" or m.startswith(module + "."))]
        assert all(position[m] < i for m in inner), (module, inner)
    stages = [m for m in modules if m.count(".") == 1 and m.startswith("stages.")]
    assert stages == sorted(stages, key=lambda m: int(m.split(".")[1])), stages


def assert_first_departure(artifact: dict, expected: str) -> None:
    """``expected`` is the first layer over tolerance, clearly over it; every layer before it agrees."""
    assert artifact["first_departure"] == expected, artifact["first_departure"]
    modules = [layer["module"] for layer in artifact["layers"]]
    first = modules.index(expected)
    assert first > 10 and all(layer["ok"] for layer in artifact["layers"][:first])
    assert artifact["layers"][first]["rel_l2"] > 10 * artifact["tolerance"]
    assert not artifact["layers"][-1]["ok"] and modules[-1] == ""  # the logits depart too


class _Faulted(dict):
    """``faulted[model]``: the result of ``verify --locate MODEL --json`` on a copy of its export, faults planted."""

    def __init__(self, exports: _Exports, tmp_path_factory) -> None:
        super().__init__()
        self.exports, self.factory = exports, tmp_path_factory

    def __missing__(self, name: str):
        out = faulted_copy(self.exports, name, self.factory.mktemp(f"{name}-faulted"))
        self[name] = locate(name, out, "--json")
        return self[name]


@pytest.fixture(scope="module")
def faulted(exports, tmp_path_factory) -> _Faulted:
    return _Faulted(exports, tmp_path_factory)


@pytest.mark.parametrize("name", FAMILIES)
def test_planted_onnx_fault_is_located_at_its_module(faulted, name):
    result = faulted[name]
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)
    assert payload["departs"] is True
    artifacts = by_file(payload)
    assert_first_departure(artifacts[f"{name}.onnx"], FAULTS[name][1])
    # The untouched multi-branch ONNX of the same export is searched as well and does not depart.
    assert artifacts[f"{name}.multibranch.onnx"]["first_departure"] is None
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    assert f"{name}.onnx: departs at {FAULTS[name][1]}" in message


def test_planted_package_fault_is_located_at_its_module(faulted):
    name = COREML_MODEL
    package = by_file(json.loads(faulted[name].stdout))[f"{name}.mlpackage"]
    assert package["stage"] == "coreml-fp16" and package["tolerance"] == 1e-2
    assert_first_departure(package, PACKAGE_FAULT[1])
    assert f"{name}.mlpackage: departs at {PACKAGE_FAULT[1]}" in faulted[name].stderr


@pytest.mark.parametrize("name", FAMILIES)
def test_untouched_export_departs_nowhere(exports, name):
    result = locate(name, exports[name], "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["departs"] is False and payload["departures"] == []
    files = {f"{name}.onnx", f"{name}.multibranch.onnx"} | ({f"{name}.mlpackage"} if name == COREML_MODEL else set())
    assert set(by_file(payload)) == files
    for artifact in payload["artifacts"]:
        assert artifact["first_departure"] is None and artifact["error"] is None, artifact["file"]
        modules = [layer["module"] for layer in artifact["layers"]]
        assert len(modules) > 20 and len(set(modules)) == len(modules)
        assert modules[-1] == ""  # the whole model (the logits) completes last
        assert_execution_order(modules)
        assert max(layer["rel_l2"] for layer in artifact["layers"]) <= artifact["tolerance"]


def strip_scopes(onnx_path: Path) -> None:
    """Drop every node's metadata, as onnxsim does for the nodes it writes."""
    model = onnx.load(onnx_path)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, onnx_path)


def test_table_names_the_first_departure_and_what_was_not_searched(exports, tmp_path, monkeypatch):
    """Also: a deployed ONNX without node metadata is mapped through a fresh export's scopes, by value name."""
    name = COREML_MODEL
    out = tmp_path / "out"
    shutil.copytree(exports[name] / name, out / name)
    plant_fault(out / name / f"{name}.onnx", FAULTS[name][0])
    strip_scopes(out / name / f"{name}.onnx")

    def unavailable(path, inputs, source):
        raise LocateUnavailable("no interpreter here")

    monkeypatch.setattr(locate_module, "coreml_module_outputs", unavailable)
    result = locate(out / name, out)  # a directory works as well as a name
    assert result.exit_code == 1, result.output
    assert "← first departure" in result.stdout
    assert f"{name}.onnx: departs first at {FAULTS[name][1]}" in result.stdout
    assert f"{name}.multibranch.onnx: nothing departs" in result.stdout
    assert f"{name}.mlpackage: not searched: no interpreter here" in result.stdout


def test_usage_errors_are_one_line(exports, tmp_path):
    out = exports["fastvit_t8"]
    assert_usage_error(locate("no_such_model", out), "no_such_model")
    assert_usage_error(locate("mobileone_s0", out), "no artifacts for mobileone_s0")
    assert_usage_error(locate(tmp_path, out), "no exported artifacts")
    result = runner.invoke(app, ["verify", "fastvit_t8", "--locate", "fastvit_t8", "--out", str(out)])
    assert_usage_error(result, "--locate searches one export")
    both = tmp_path / "both"
    for copy in ("a", "b"):
        shutil.copytree(out / "fastvit_t8", both / copy)
    assert_usage_error(locate(both, out), "holds 2")


def test_module_outputs_come_from_node_scopes(exports):
    model = onnx.load(exports["fastvit_t8"] / "fastvit_t8" / "fastvit_t8.onnx", load_external_data=False)
    values = onnx_module_values(model.graph)
    assert values[""] == model.graph.output[0].name  # the whole model's output is the logits
    assert values["head"] == values[""]
    assert "stages.2.blocks.1.token_mixer" in values
    for node in model.graph.node:  # stripping every scope leaves nothing to map
        del node.metadata_props[:]
    assert onnx_module_values(model.graph) == {}
