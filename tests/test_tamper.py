"""``verify`` catches altered artifacts: a change just above the ONNX tolerance, and a changed ``.mlpackage``.

One export of ``fastvit_t8`` at 64x64 (all targets) is shared by the module. Where a test must show that
the *numeric* check catches a change (not the hash check), it records the altered file's new digest in the
manifest first (:func:`_rehash`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deployforge.cli.app import app

MODEL = "fastvit_t8"
SIZE = "64"
ONNX = f"{MODEL}.onnx"
MULTIBRANCH = f"{MODEL}.multibranch.onnx"
PACKAGE = f"{MODEL}.mlpackage"
BOUND = 1e-5  # the ONNX rel-L2 bound (docs/design.md, "Parity and tolerances")
LOOSE = 1e-3  # a loosened bound the edge tamper must still fail
EDGE = 3 * BOUND  # the edge tamper: 3x over the bound, 30x under the loosened one

runner = CliRunner()


# --- the two places that know the manifest / report layout -------------------------------------------


def _rehash(directory: Path, name: str) -> None:
    """Record artifact ``name``'s current sha256 in ``directory``'s manifest (as if it had been exported so)."""
    from deployforge.manifest import artifact_digest

    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    assert name in manifest["artifacts"], manifest["artifacts"]
    manifest["artifacts"][name] = artifact_digest(directory / name)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def _stage_of_file(report: dict, name: str) -> dict:
    """The waterfall row of ``verify --json`` that ran artifact ``name``."""
    (row,) = [s for s in report["stages"] if s.get("file") == name]
    return row


# --- helpers -----------------------------------------------------------------------------------------


def verify_json(directory: Path) -> tuple[int, dict]:
    result = runner.invoke(app, ["verify", str(directory), "--json"])
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.output, result.output
    (report,) = json.loads(result.stdout)
    return result.exit_code, report


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def rel_l2(candidate: np.ndarray, original: np.ndarray) -> float:
    a, b = np.asarray(candidate, np.float64), np.asarray(original, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def output_bias(model) -> str:
    """Name of the bias initializer of the node that produces the graph's output (Gemm, or MatMul + Add)."""
    initializers = {i.name for i in model.graph.initializer}
    output = model.graph.output[0].name
    (producer,) = [n for n in model.graph.node if output in n.output]
    if producer.op_type == "Gemm" and len(producer.input) == 3:
        candidates = [producer.input[2]]
    elif producer.op_type == "Add":
        candidates = list(producer.input)
    else:
        candidates = []
    biases = [name for name in candidates if name in initializers]
    assert len(biases) == 1, f"no bias initializer on the {producer.op_type} that produces {output}"
    return biases[0]


def shift_logits(path: Path, relative: float, seed: int = 0) -> float:
    """Add a fixed vector to the output bias of ``path`` so its logits move by ``relative`` rel-L2.

    Every row of the logits moves by the same vector ``v``, so over a batch the relative change is
    ``‖v‖ / rms(‖row‖)``; it is sized on a batch of N(0, 1) images like the one ``verify`` uses.

    Returns:
        The rel-L2 change measured on that batch.
    """
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    batch = rng.standard_normal((8, 3, int(SIZE), int(SIZE))).astype(np.float32)
    before = run_onnx(path, batch)
    rms_row = np.linalg.norm(before.astype(np.float64)) / np.sqrt(len(before))

    model = onnx.load(str(path))
    name = output_bias(model)
    (tensor,) = [i for i in model.graph.initializer if i.name == name]
    bias = numpy_helper.to_array(tensor).astype(np.float64)
    shift = rng.standard_normal(bias.shape)
    shift *= relative * rms_row / np.linalg.norm(shift)
    tensor.CopyFrom(numpy_helper.from_array((bias + shift).astype(np.float32), name))
    onnx.save(model, str(path))
    return rel_l2(run_onnx(path, batch), before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """``OUT/fastvit_t8`` exported once with ``--to all --multibranch --input-size 64``."""
    out = tmp_path_factory.mktemp("export")
    result = runner.invoke(
        app, ["export", MODEL, "--to", "all", "--multibranch", "--input-size", SIZE, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out / MODEL


@pytest.fixture
def copy_of(exported, tmp_path) -> Path:
    directory = tmp_path / MODEL
    shutil.copytree(exported, directory)
    return directory


# --- tests -------------------------------------------------------------------------------------------


def test_untampered_export_verifies(exported):
    code, report = verify_json(exported)
    assert code == 0, report["breaches"]
    assert report["ok"] is True
    assert _stage_of_file(report, ONNX)["parity"]["rel_l2"] <= BOUND


def test_tamper_at_the_edge_of_the_onnx_tolerance(copy_of):
    moved = shift_logits(copy_of / ONNX, EDGE)
    assert 0.7 * EDGE < moved < 1.5 * EDGE, moved
    _rehash(copy_of, ONNX)  # the hash check passes: only the numbers can catch it

    code, report = verify_json(copy_of)

    assert code == 1, report
    assert report["ok"] is False
    parity = _stage_of_file(report, ONNX)["parity"]
    assert parity["ok"] is False
    assert BOUND < parity["rel_l2"] < LOOSE, parity  # caught at 1e-5; a 1e-3 bound would let it through
    assert _stage_of_file(report, MULTIBRANCH)["parity"]["ok"] is True
    assert report["breaches"], report
    assert all(b.startswith("onnx:") for b in report["breaches"]), report["breaches"]
    assert not any("sha256" in b for b in report["breaches"]), report["breaches"]


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_tampered_mlpackage_weights_fail_verify(copy_of):
    weights = _largest_file(copy_of / PACKAGE)
    assert weights.name == "weight.bin", weights
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    weights.write_bytes(bytes(data))

    code, report = verify_json(copy_of)

    assert code == 1, report
    assert report["ok"] is False
    assert [b for b in report["breaches"] if b.startswith(f"{PACKAGE}:")], report["breaches"]
    assert any("sha256" in b for b in report["breaches"] if b.startswith(f"{PACKAGE}:"))
    assert not any(b.startswith((f"{ONNX}:", f"{MULTIBRANCH}:")) for b in report["breaches"]), report["breaches"]


SPEC = Path("Data") / "com.apple.CoreML" / "model.mlmodel"
WEIGHTS = Path("Data") / "com.apple.CoreML" / "weights" / "weight.bin"


def _edit_main_block(package: Path, edit) -> None:
    """Apply ``edit`` to the main block of the package's program (coremltools' proto classes) and save it."""
    from coremltools.proto import Model_pb2

    model = Model_pb2.Model()
    model.ParseFromString((package / SPEC).read_bytes())
    function = model.mlProgram.functions["main"]
    edit(function.block_specializations[function.opset])
    (package / SPEC).write_bytes(model.SerializeToString())


def _assert_numbers_fail(directory: Path) -> None:
    """verify exits 1 on the package's Core ML row, by its numbers (the hash was re-recorded), naming the file."""
    _rehash(directory, PACKAGE)
    code, report = verify_json(directory)
    assert code == 1, report
    assert not any("sha256" in b for b in report["breaches"]), report["breaches"]
    (breach,) = report["breaches"]
    assert breach.startswith("coreml-fp16: ") and PACKAGE in breach, breach
    row = _stage_of_file(report, PACKAGE)
    assert row["error"] is not None or row["parity"]["ok"] is False, row


def test_scaled_weights_in_the_blob_fail_on_numbers(copy_of):
    from deployforge.mlprogram.blob import WeightFile

    path = copy_of / PACKAGE / WEIGHTS
    blob = max(WeightFile(path).blobs.values(), key=lambda b: b.size)
    data = bytearray(path.read_bytes())
    start, stop = blob.data_offset, blob.data_offset + blob.size
    values = np.frombuffer(bytes(data[start:stop]), dtype=blob.dtype) * 1.25  # the file stays well-formed
    data[start:stop] = values.astype(blob.dtype).tobytes()
    path.write_bytes(bytes(data))
    _assert_numbers_fail(copy_of)


def test_an_edited_op_fails_on_numbers(copy_of):
    def add_becomes_sub(block) -> None:
        first_add = next(op for op in block.operations if op.type == "add")
        first_add.type = "sub"

    _edit_main_block(copy_of / PACKAGE, add_becomes_sub)
    _assert_numbers_fail(copy_of)


def test_a_changed_constant_fails_on_numbers(copy_of):
    def shift_the_padding(block) -> None:  # a 3x3 conv's pad constant [1, 1, 1, 1] -> [2, 0, 2, 0]: same shape
        consts = {op.outputs[0].name: op for op in block.operations if op.type == "const"}
        for conv in (op for op in block.operations if op.type == "conv"):
            (binding,) = conv.inputs["pad"].arguments
            pad = consts[binding.name].attributes["val"].immediateValue.tensor.ints
            if list(pad.values) == [1, 1, 1, 1]:
                pad.values[:] = [2, 0, 2, 0]
                return
        raise AssertionError("no conv with pad [1, 1, 1, 1]")

    _edit_main_block(copy_of / PACKAGE, shift_the_padding)
    _assert_numbers_fail(copy_of)


def test_corrupt_mlpackage_spec_fails_verify_even_with_its_hash_recorded(copy_of):
    spec = copy_of / PACKAGE / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec.write_bytes(spec.read_bytes()[: spec.stat().st_size // 3])
    _rehash(copy_of, PACKAGE)

    code, report = verify_json(copy_of)

    assert code == 1, report
    package_breaches = [b for b in report["breaches"] if b.startswith(f"{PACKAGE}:")]
    assert package_breaches, report["breaches"]
    assert not any("sha256" in b for b in report["breaches"]), report["breaches"]


@pytest.mark.parametrize("name", [ONNX, MULTIBRANCH])
def test_exported_onnx_batch_dimension_is_symbolic(exported, name):
    import onnx

    model = onnx.load(str(exported / name))
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        assert dim.HasField("dim_param") and not dim.HasField("dim_value"), (value.name, dim)
    batch = np.random.default_rng(1).standard_normal((3, 3, int(SIZE), int(SIZE))).astype(np.float32)
    assert run_onnx(exported / name, batch).shape[0] == 3  # a batch size used neither at export nor in parity
