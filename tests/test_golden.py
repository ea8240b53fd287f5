"""Golden vectors: ``verify`` judges every artifact against ``reference.npz`` alone, where torch cannot be imported.

One export of ``mobileone_s0`` at 64 px (ONNX and Core ML) is shared by the module; each test copies it before
changing anything. The torch-free runs are subprocesses whose import system refuses ``torch`` (and timm and
torchvision, which need it), as on a deployment box with onnxruntime and no PyTorch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import deployforge
from deployforge.golden import GOLDEN, Batch, normalize, read_golden
from deployforge.manifest import artifact_digest

MODEL = "mobileone_s0"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

WITHOUT_TORCH = textwrap.dedent(
    """
    import sys

    class RefuseTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm"):
                raise ImportError(f"No module named '{name}' (refused by the test)")

    sys.meta_path.insert(0, RefuseTorch())
    sys.argv = ["deployforge", *sys.argv[1:]]
    from deployforge.cli.app import main

    try:
        main()
    finally:
        sys.stderr.write(f"torch imported: {'torch' in sys.modules}\\n")
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    report = deployforge.export(MODEL, to="all", input_size=64, out=out)
    assert report.ok, report.breaches
    return report.directory


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    target = tmp_path / MODEL
    shutil.copytree(exported, target)
    return target


def verify_without_torch(directory: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, "verify", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert "torch imported: False" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def rehash(directory: Path, name: str) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["artifacts"][name] = artifact_digest(directory / name)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def test_the_golden_file_holds_what_export_compared(exported):
    golden = read_golden(exported, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert golden.batch.inputs.shape == (8, 3, 64, 64) and golden.batch.pixels is None  # N(0, 1) stays float32
    assert golden.outputs.shape == (8, 1000)
    assert golden.images.pixels.dtype == np.uint16 and golden.images.inputs.shape == (32, 3, 64, 64)
    assert golden.image_outputs.shape == (32, 1000)
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["artifacts"][GOLDEN] == artifact_digest(exported / GOLDEN)


def test_pixels_normalize_to_the_same_bits_as_at_export():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    batch = Batch.of_pixels(pixels, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert batch.inputs.dtype == np.float32
    assert np.array_equal(batch.inputs, normalize(pixels.copy(), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]))
    import torch  # the export side computes the same float32 operations

    expected = (torch.from_numpy(pixels).float() / 255.0 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / (
        torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    )
    assert np.array_equal(batch.inputs, expected.numpy())


def test_verify_with_torch_also_checks_the_rebuilt_original(exported):
    (report,) = deployforge.verify(exported).reports
    assert report.ok, report.breaches
    stages = [row.stage for row in report.stages]
    assert stages[:4] == ["original", "fuse", "reparameterize", "trace"]
    assert {"onnx", "coreml-fp16"} <= set(stages) and not report.notes


def test_verify_without_torch_passes_on_intact_artifacts(copy):
    result = verify_without_torch(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stages not re-proved: torch cannot be imported here" in result.stdout
    assert f"{MODEL}: verified" in result.stdout
    for row in ("onnx", "coreml-fp16"):
        assert f"│ {row} " in result.stdout  # both artifacts were run and are in the table
    assert "│ fuse " not in result.stdout


def test_verify_without_torch_fails_on_a_changed_onnx(copy):
    path = copy / f"{MODEL}.onnx"
    model = onnx.load(path)
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * np.float32(1.01), biggest.name))
    onnx.save(model, path)
    rehash(copy, path.name)  # the numbers, not the hash, must catch it

    result = verify_without_torch(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "onnx: rel-L2" in result.stdout and f"({MODEL}.onnx)" in result.stdout


def test_verify_without_torch_fails_on_a_changed_golden_file(copy):
    with np.load(copy / GOLDEN) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["outputs"] = arrays["outputs"] * np.float32(1.001)
    np.savez_compressed(copy / GOLDEN, **arrays)

    result = verify_without_torch(copy)
    assert result.returncode == 1
    assert f"{GOLDEN}: sha256 differs from the manifest" in result.stdout


def test_an_unreadable_golden_file_fails_verification(copy):
    (copy / GOLDEN).write_bytes(b"not a zip")
    rehash(copy, GOLDEN)
    (report,) = deployforge.verify(copy).reports
    assert not report.ok
    (breach,) = report.breaches
    assert breach.startswith(f"{GOLDEN}: {copy / GOLDEN} is not a readable .npz archive")
    assert breach.endswith("re-run `deployforge export` to write it")
