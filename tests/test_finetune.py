"""Fine-tuned checkpoints: another class count is read from the classifier's shapes; other sizes where allowed.

For the families timm ships, the checkpoint is timm's own model built with 10 classes (what fine-tuning with timm
gives); for the two it does not, our model built with 10 classes. Either way the export must compute what that
model computes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from typer.testing import CliRunner

import deployforge
from deployforge.cli.app import app
from deployforge.errors import InvalidSetting
from deployforge.golden import read_golden
from deployforge.registry import get_spec, list_models
from deployforge.stress import stress_weights
from deployforge.targets import get_target
from deployforge.targets.protocol import run_in_batches

CLASSES = 10
OTHER_SIDE = 96  # not the published size of any family
SMALLEST = list({spec.family: spec.name for spec in reversed(list_models())}.values())
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def fine_tuned(name: str) -> torch.nn.Module:
    """A stressed 10-class model of ``name``'s architecture: timm's when timm has it, else ours."""
    spec = get_spec(name)
    torch.manual_seed(5)
    if spec.timm_name is not None:
        import timm

        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=CLASSES)
    else:
        model = dataclasses.replace(spec, num_classes=CLASSES).build()
    return stress_weights(model, seed=5).eval()


@pytest.mark.parametrize("name", SMALLEST)
def test_a_ten_class_checkpoint_exports_and_verifies(name, tmp_path, rel_l2):
    spec = get_spec(name)
    model = fine_tuned(name)
    checkpoint = tmp_path / "fine_tuned.pth"
    torch.save(model.state_dict(), checkpoint)
    side = spec.input_size if spec.fixed_input_size else OTHER_SIDE

    report = deployforge.export(name, weights=checkpoint, input_size=side, to="onnx", out=tmp_path / "out")

    assert report.ok, report.breaches
    output = report.manifest.output
    assert output.classes == CLASSES and output.classes_source.startswith("checkpoint's ")
    assert f"({CLASSES}, " in output.classes_source  # the classifier weight's shape is quoted
    golden = read_golden(report.directory, spec.mean, spec.std)
    assert golden.outputs.shape == (8, CLASSES)
    with torch.no_grad():  # the export computes what the fine-tuned model computes
        assert rel_l2(golden.outputs, model(torch.from_numpy(golden.batch.inputs))) <= 1e-5
    verified = deployforge.verify(report.directory)
    assert verified.ok, verified.reports[0].breaches
    assert verified.reports[0].stages[0].stage == "original"


RUNTIME_TARGETS = ("onnx", "ort", "executorch", "litert", "ncnn")


@pytest.mark.slow
def test_a_timm_checkpoint_runs_on_every_runtime_as_timm_computes_it(tmp_path, rel_l2):
    """timm's own FastViT-T8 (stressed statistics, 10 classes) through every runtime, judged against timm itself."""
    pytest.importorskip("executorch")
    pytest.importorskip("litert_torch")
    pytest.importorskip("ncnn")
    spec = get_spec("fastvit_t8")
    model = fine_tuned(spec.name)
    checkpoint = tmp_path / "fine_tuned.pth"
    torch.save(model.state_dict(), checkpoint)

    report = deployforge.export(
        spec.name, weights=checkpoint, input_size=64, to=",".join(RUNTIME_TARGETS), out=tmp_path / "out"
    )

    assert report.ok, report.breaches
    golden = read_golden(report.directory, spec.mean, spec.std)
    with torch.no_grad():
        expected = model(torch.from_numpy(golden.batch.inputs)).numpy()
    for name in RUNTIME_TARGETS:
        target = get_target(name)
        runner = target.load(report.directory / target.files(spec.name)[0], 1)
        assert rel_l2(run_in_batches(runner, golden.batch.inputs, 1), expected) <= 1e-5, name


def test_fixed_size_architectures_refuse_another_size(tmp_path):
    with pytest.raises(InvalidSetting, match="takes 224x224 inputs only") as error:
        deployforge.export("efficientformer_l1", input_size=OTHER_SIDE, out=tmp_path)
    assert "\n" not in str(error.value) and not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def mobileone_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "s0_10.pth"
    torch.save(fine_tuned("mobileone_s0").state_dict(), path)
    return path


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_reports_the_class_count(mobileone_checkpoint, tmp_path):
    base = ("export", "mobileone_s0", "--weights", mobileone_checkpoint, "--input-size", 64, "--to", "onnx")
    result = run(*base, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"classes: {CLASSES} (checkpoint's head.fc.weight ({CLASSES}, 1024))" in result.output

    stated = run(*base, "--num-classes", CLASSES, "--out", tmp_path / "stated")
    assert stated.exit_code == 0, stated.output

    wrong = run(*base, "--num-classes", 5, "--out", tmp_path / "wrong")
    assert wrong.exit_code == 2
    assert "--num-classes: the checkpoint's classifier has 10 classes" in wrong.output and "not 5" in wrong.output
    assert not (tmp_path / "wrong").exists()


def test_num_classes_without_checkpoint(tmp_path):
    report = deployforge.export("mobileone_s0", num_classes=3, input_size=64, to="onnx", out=tmp_path)
    assert report.ok
    assert report.manifest.output.shape[1] == 3 and report.manifest.output.classes_source == "stated"
    with pytest.raises(InvalidSetting, match="class count must be a whole number at least 1"):
        deployforge.export("mobileone_s0", num_classes=0, out=tmp_path)


def test_other_mismatches_stay_strict_errors(mobileone_checkpoint, tmp_path):
    state = torch.load(mobileone_checkpoint, weights_only=True)
    dropped = next(k for k in state if k.endswith("running_var"))
    del state[dropped]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)

    with pytest.raises(InvalidSetting) as error:
        deployforge.export("mobileone_s0", weights=path, out=tmp_path / "out")
    message = str(error.value)
    assert "\n" not in message
    assert f"missing 1: {dropped}" in message and "unexpected 1: extra.weight" in message
    assert "head.fc" not in message  # the classifier fits: the count was read, only the real mismatches listed


def test_a_headless_checkpoint_is_a_strict_error(mobileone_checkpoint, tmp_path):
    state = {k: v for k, v in torch.load(mobileone_checkpoint, weights_only=True).items() if "head" not in k}
    path = tmp_path / "headless.pth"
    torch.save(state, path)
    with pytest.raises(InvalidSetting, match=r"missing 2: head\.fc\.weight, head\.fc\.bias"):
        deployforge.export("mobileone_s0", weights=path, out=tmp_path / "out")
