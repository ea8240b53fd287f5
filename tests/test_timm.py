"""``timm:NAME``: models outside the zoo, merged through timm's own conventions, proved by the same waterfall.

Each model is checked against timm itself: timm's ``reparameterize_model`` of the same stressed weights must give
what the exported ONNX gives on the golden inputs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import deployforge
from deployforge.cli.app import app
from deployforge.errors import DeployforgeError
from deployforge.golden import read_golden
from deployforge.pipeline import rebuild_original
from deployforge.timm_models import timm_spec

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Outside the zoo, each with blocks that merge by one of timm's conventions: RepViT's fuse() (conv-BN and
# RepVGG-style depthwise), RepGhost's reparameterize() of its BN-identity branch, RepVGG's reparameterize() of
# 3x3 + 1x1 + identity, TinyViT's fuse() of its conv-BN pairs.
MODELS = ["repvit_m0_9", "repghostnet_050", "repvgg_a0", "tiny_vit_5m_224"]
SIDE = 96


@pytest.mark.parametrize("name", MODELS)
def test_a_timm_model_goes_through_the_pipeline(name, tmp_path, rel_l2):
    report = deployforge.export(f"timm:{name}", to="all", input_size=SIDE, out=tmp_path)

    assert report.ok, report.breaches
    assert report.directory == tmp_path / name and report.manifest.origin == "timm"
    merge = next(row for row in report.stages if row.stage == "reparameterize")
    assert merge.details.foreign_merged > 0
    assert report.manifest.size.onnx_batchnorm_nodes == 0  # every BN had a conv to fold into, directly or after merge

    # timm's own merge of the same weights computes what the exported graph computes
    spec = timm_spec(name)
    reference = timm.utils.reparameterize_model(rebuild_original(spec, report.manifest.weights))
    golden = read_golden(report.directory, spec.mean, spec.std)
    session = ort.InferenceSession(str(report.directory / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"image": golden.batch.inputs})[0]
    with torch.no_grad():
        assert rel_l2(ours, reference(torch.from_numpy(golden.batch.inputs))) <= 1e-5

    verified = deployforge.verify(report.directory)
    assert verified.ok, verified.reports[0].breaches
    assert verified.reports[0].stages[0].stage == "original"


def test_cli_exports_and_verifies_by_timm_name(tmp_path):
    runner = CliRunner()
    exported = runner.invoke(app, ["export", "timm:repvgg_a0", "--to", "onnx", "--input-size", "64", "--out", tmp_path])
    assert exported.exit_code == 0, exported.output
    assert "foreign merged 22" in exported.output
    verified = runner.invoke(app, ["verify", "timm:repvgg_a0", "--out", tmp_path])
    assert verified.exit_code == 0, verified.output
    assert "repvgg_a0: verified" in verified.output


def test_unknown_timm_names_suggest_the_closest():
    with pytest.raises(DeployforgeError, match=r"timm has no model 'repvit_m0_99'; did you mean timm:repvit_m0_9"):
        timm_spec("timm:repvit_m0_99")


def test_a_model_that_cannot_be_converted_names_the_stage(tmp_path):
    """EfficientViT (MSRA) converts to ONNX but not to Core ML (coremltools has no translation for an aliasing op)."""
    result = CliRunner().invoke(app, ["export", "timm:efficientvit_m0", "--to", "coreml", "--out", tmp_path])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: efficientvit_m0: the coreml stage failed (NotImplementedError: ")
    assert "Traceback" not in result.output and not any(tmp_path.iterdir())


def test_without_timm_the_error_names_the_extra(tmp_path):
    script = textwrap.dedent(
        """
        import sys

        class RefuseTimm:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "timm":
                    raise ImportError("No module named 'timm'")

        sys.meta_path.insert(0, RefuseTimm())
        sys.argv = ["deployforge", "export", "timm:repvgg_a0", "--out", sys.argv[1]]
        from deployforge.cli.app import main

        main()
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == "error: timm: models need timm, which is not installed; pip install 'deployforge[timm]'"
    assert np.array_equal([], list(tmp_path.iterdir()))
