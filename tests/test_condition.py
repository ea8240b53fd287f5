"""Weight conditioning: bounded, input-dependent activations, stressed values kept, stages still exact, recorded."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from pydantic import TypeAdapter
from torch import nn

from deployforge.condition import (
    CALIBRATION_BATCH,
    CALIBRATION_SEED,
    GATE_SPREAD,
    LOW_PASS,
    ConditioningReport,
    activation_stats,
    calibration_images,
    condition_weights,
    input_dependence,
)
from deployforge.errors import DeployforgeError
from deployforge.fuse import fuse_batchnorm
from deployforge.manifest import WeightsSource, read_manifest
from deployforge.models.blocks import SqueezeExcite
from deployforge.options import ExportSettings, Target
from deployforge.pipeline import build_original, export, parity_inputs, rebuild_original, weights_source
from deployforge.registry import IMAGENET_MEAN, IMAGENET_STD, get_spec, list_models
from deployforge.reparam import reparameterize
from deployforge.stress import stress_weights
from deployforge.verification import verify_directory

BIG_PARAMS_M = 20.0  # variants above this many parameters are slow-marked (as in conftest)
PROBE_SEED = 5  # held-out images: the calibration batch is drawn with CALIBRATION_SEED
# float16 holds 65504; 1e4 leaves a 6.5x margin for inputs unlike the calibration batch. The largest values are raw
# conv outputs of the multi-branch form, whose kernels' mean component adds up before the BatchNorm that follows
# (MobileOne-S0: 2.4e3 at 64 px, 2.9e3 at 224); the deployed model folds that BatchNorm into the conv.
MAX_ACTIVATION = 1e4
# Input-dependent share of the logits' spread. Stressed but unconditioned, every model but MobileOne-S4 (whose logits
# reach 5e8) measures 0.00-0.06; conditioned, 0.07-0.7. 0.05 fails a conditioning that leaves the logits a
# near-constant bias (the top-1 class is then the same for every input and an FP16 top-1 agreement check passes
# without judging anything).
INPUT_DEPENDENCE_FLOOR = 0.05
# Median over a model's BatchNorms of the channel mean of |running mean| and |log running var|: 0 and 0 for a fresh
# BatchNorm; about 0.08 and 0.4 for the stress draws; 0.07-0.7 and 0.9-2.1 once re-estimated (measured).
MEAN_FLOOR, LOG_VAR_FLOOR = 0.05, 0.4
TOL = 1e-5
# A relative input change of NUDGE moves the logits by at most MAX_NUDGE_GAIN times as much. Conditioned without the
# kernels' mean component, at 64 px: MobileOne-S0 75, MobileOne-S4 46, MobileViT v2-050 31 (chaotic: FP16's rounding
# alone then gives rel-L2 1-3e-2 at the published size); with it 5-20 (measured).
NUDGE, MAX_NUDGE_GAIN = 1e-3, 25.0
MODELS = [
    pytest.param(s.name, marks=pytest.mark.slow) if s.reference.params_m > BIG_PARAMS_M else s.name
    for s in list_models()
]
# The fold numerics are per family (test_stages covers every model's folds on stressed weights): the smallest of each,
# and MobileOne-S4, the one with squeeze-excite gates in its body.
FUSE_MODELS = [
    "fastvit_t8",
    "mobileone_s0",
    "mobileone_s4",
    "mobilevit_xxs",
    "mobilevitv2_050",
    "efficientformer_l1",
    "mobileformer_26m",
    "vt_resnet18",
]


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _spatial(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1


def _running(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


def _conditioned(name: str, stressed_original, input_side) -> tuple[nn.Module, ConditioningReport]:
    spec = get_spec(name)
    model = copy.deepcopy(stressed_original(name))  # the session's stressed model stays as it is
    return model, condition_weights(model, input_side(name), spec.mean, spec.std)


@pytest.mark.parametrize("name", MODELS)
def test_conditioning_bounds_activations_and_keeps_the_stress(name, stressed_original, input_side, bn_count):
    spec, side, stressed = get_spec(name), input_side(name), stressed_original(name)
    model, report = _conditioned(name, stressed_original, input_side)
    stats = activation_stats(model, calibration_images(4, side, spec.mean, spec.std, PROBE_SEED))
    assert stats.max_activation < MAX_ACTIVATION, stats
    assert stats.input_dependence > INPUT_DEPENDENCE_FLOOR, stats

    # not chaotic: a small change of the input moves the logits by about as much, as in a trained network
    images = calibration_images(4, side, spec.mean, spec.std, PROBE_SEED)
    nudged = images * (1 + NUDGE * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        logits, moved = model(images), model(nudged)
    assert float((moved - logits).norm() / logits.norm()) < MAX_NUDGE_GAIN * NUDGE

    # only running statistics, spatial kernels' means and squeeze-excite gates change: layer scales and affines
    # keep their stressed values
    before, after = stressed.state_dict(), model.state_dict()
    assert report.batchnorms == bn_count(model) > 0
    gates = [f"{path}.fc2." for path, module in model.named_modules() if isinstance(module, SqueezeExcite)]
    assert report.gates == len(gates)
    kernels = [f"{path}.weight" for path, module in model.named_modules() if _spatial(module)]
    assert report.kernels == len(kernels) > 0 and report.low_pass == LOW_PASS
    for key in kernels:
        added = after[key] - before[key]  # one constant per (out, in) slice, of the predicted size
        torch.testing.assert_close(added, added[..., :1, :1].expand_as(added))
        expected = LOW_PASS * before[key].abs().mean(dim=(2, 3), keepdim=True)
        torch.testing.assert_close(added[..., :1, :1].abs(), expected)
    for key, value in after.items():
        if not (_running(key) or key.startswith(tuple(gates)) or key in kernels):
            assert torch.equal(value, before[key]), f"{key} changed"
    norms = _batchnorms(model)
    for norm, original in zip(norms, _batchnorms(stressed), strict=True):
        assert not torch.equal(norm.running_var, original.running_var), "a BatchNorm was not re-estimated"
        assert not norm.training

    # and the statistics end far from a fresh BatchNorm's, so a fold that drops a term still shows
    means = torch.tensor([float(n.running_mean.abs().mean()) for n in norms])
    log_vars = torch.tensor([float(n.running_var.log().abs().mean()) for n in norms])
    assert means.median() > MEAN_FLOOR, means
    assert log_vars.median() > LOG_VAR_FLOOR, log_vars


@pytest.mark.parametrize("name", FUSE_MODELS)
def test_fuse_and_reparameterize_stay_exact(name, stressed_original, input_side, rel_l2):
    # on the pipeline's parity inputs; on smooth images conditioned MobileOne reaches 1e-5 and more (docs/design.md)
    model, _ = _conditioned(name, stressed_original, input_side)
    inputs = parity_inputs(input_side(name), 4)
    fused, report = fuse_batchnorm(model, inputs[:2])
    merged, _ = reparameterize(fused)
    assert report.folded
    with torch.no_grad():
        assert rel_l2(merged(inputs), model(inputs)) < TOL


# --- the pieces ----------------------------------------------------------------------------------------------


def test_calibration_images_are_smooth_image_like_and_reproducible():
    images = calibration_images(8, 64, IMAGENET_MEAN, IMAGENET_STD, seed=3)
    assert images.shape == (8, 3, 64, 64)
    assert torch.equal(images, calibration_images(8, 64, IMAGENET_MEAN, IMAGENET_STD, seed=3))
    assert not torch.equal(images, calibration_images(8, 64, IMAGENET_MEAN, IMAGENET_STD, seed=4))
    pixels = images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert 0.3 < images.std() < 1.5 and images.mean().abs() < 0.5  # ~ a normalized photo
    # neighbouring pixels are correlated, unlike white noise
    left, right = images[..., :-1].flatten(), images[..., 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1] > 0.8
    assert images.std(dim=(1, 2, 3)).min() > 0.1  # no flat image


def test_input_dependence_splits_the_spread():
    generator = torch.Generator().manual_seed(0)
    bias = torch.randn(1, 10, generator=generator)
    assert input_dependence(bias.expand(4, 10)) == 0.0
    assert input_dependence(bias.expand(4, 10) + torch.randn(4, 1, generator=generator)) == pytest.approx(0.0)
    varying = torch.randn(4, 10, generator=generator)
    assert input_dependence(varying - varying.mean(dim=0)) == pytest.approx(1.0)
    assert 0.0 < input_dependence(varying + 3 * bias) < input_dependence(varying + bias) < 1.0


def test_model_without_batchnorm_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    stress_weights(model, 0)
    before = copy.deepcopy(model.state_dict())
    report = condition_weights(model, 32, IMAGENET_MEAN, IMAGENET_STD)
    assert not report.changed and report.batchnorms == 0
    assert "no BatchNorm" in report.description
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_flags_restored_and_dropout_off_while_calibrating():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=0.3), nn.Dropout(0.9), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)
    )
    model.train()
    model[4].eval()
    twin = copy.deepcopy(model)
    first = condition_weights(model, 16, IMAGENET_MEAN, IMAGENET_STD)
    assert [m.training for m in model] == [True, True, True, True, False]
    assert (model[1].momentum, model[4].momentum) == (0.3, 0.1)
    condition_weights(twin, 16, IMAGENET_MEAN, IMAGENET_STD)  # dropout in train mode would draw other statistics
    assert torch.equal(model[4].running_var, twin[4].running_var) and first.batchnorms == 2


def test_conditioned_batchnorm_normalizes_what_reaches_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16))
    stress_weights(model, 0)
    condition_weights(model, 32, IMAGENET_MEAN, IMAGENET_STD, seed=7, batch=4)
    images = calibration_images(4, 32, IMAGENET_MEAN, IMAGENET_STD, seed=7)
    with torch.no_grad():
        features = model[0](images)
    torch.testing.assert_close(model[1].running_mean, features.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model[1].running_var, features.var(dim=(0, 2, 3), unbiased=True))


def test_squeeze_excite_gates_are_narrowed_not_turned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), SqueezeExcite(8, 4))
    stress_weights(model, 0)
    with torch.no_grad():
        model[3].fc2.weight.mul_(20)  # gates near 0 or 1
    weight = model[3].fc2.weight.clone()
    report = condition_weights(model, 32, IMAGENET_MEAN, IMAGENET_STD)
    assert report.gates == 1 and "gate" in report.description
    logits = []
    model[3].fc2.register_forward_hook(lambda _, __, output: logits.append(output))
    with torch.no_grad():
        model(calibration_images(CALIBRATION_BATCH, 32, IMAGENET_MEAN, IMAGENET_STD, CALIBRATION_SEED))
    assert logits[0].std() == pytest.approx(GATE_SPREAD, rel=1e-4)
    scale = model[3].fc2.weight / weight
    assert 0 < scale.min() and scale.max() - scale.min() < 1e-6  # one positive factor: the gate keeps its direction


# --- the pipeline and the manifest ---------------------------------------------------------------------------

MODEL = "mobilevitv2_050"  # the smallest registered model


def test_build_original_conditions_random_weights(bn_count):
    spec = get_spec(MODEL)
    model, report = build_original(spec, None)
    stressed, none = build_original(spec, None, condition=False)
    assert none is None
    kernels = sum(isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 for m in model.modules())
    assert report == ConditioningReport(
        report.description, bn_count(model), CALIBRATION_BATCH, spec.input_size, CALIBRATION_SEED, 0, LOW_PASS, kernels
    )
    assert not model.training
    spatial = {f"{path}.weight" for path, module in model.named_modules() if _spatial(module)}
    for (key, value), stressed_value in zip(model.state_dict().items(), stressed.state_dict().values(), strict=True):
        assert torch.equal(value, stressed_value) != (_running(key) or key in spatial), key
    small, at_64 = build_original(spec, None, input_size=64)
    assert at_64.input_size == 64
    stats = activation_stats(small, calibration_images(4, 64, spec.mean, spec.std, PROBE_SEED))
    assert stats.max_activation < MAX_ACTIVATION


def test_rebuild_original_replays_the_record():
    spec = get_spec(MODEL)
    model, report = build_original(spec, None, input_size=64)
    rebuilt = rebuild_original(spec, weights_source(None, 0, report))
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())
    unconditioned, _ = build_original(spec, None, condition=False)
    old = rebuild_original(spec, weights_source(None, 0, None))  # a manifest from before conditioning
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in unconditioned.state_dict().items())
    with pytest.raises(DeployforgeError, match="re-run `deployforge export`"):
        rebuild_original(spec, weights_source(None, 0, replace(report, batch=CALIBRATION_BATCH + 1)))


def test_build_original_never_conditions_a_checkpoint(tmp_path):
    spec = get_spec(MODEL)
    torch.manual_seed(0)
    stressed = stress_weights(spec.build(), seed=4)
    path = tmp_path / "stressed.pth"
    torch.save(stressed.state_dict(), path)
    model, report = build_original(spec, path)
    assert report is None
    assert all(torch.equal(v, stressed.state_dict()[k]) for k, v in model.state_dict().items())
    assert weights_source(path, 0, report).conditioning is None


def test_weights_source_round_trips_and_old_records_read():
    report = ConditioningReport("12 BatchNorm running statistics re-estimated", 12, 8, 224, 2)
    source = weights_source(None, 0, report)
    assert source.conditioning == report and source.sha256 is None
    adapter = TypeAdapter(WeightsSource)
    assert adapter.validate_json(adapter.dump_json(source)) == source
    old = {"source": "random, stressed BN statistics and layer scales (seed 0)", "sha256": None, "seed": 0}
    assert adapter.validate_python(old).conditioning is None


@pytest.mark.slow
def test_export_records_conditioning_and_verify_replays_it(tmp_path):
    spec = get_spec(MODEL)
    report = export(spec, ExportSettings(target=Target.ONNX, input_size=64), out=tmp_path)
    assert report.ok, report.breaches
    directory = tmp_path / MODEL
    conditioning = read_manifest(directory).weights.conditioning
    assert conditioning is not None and conditioning.batchnorms > 0
    assert conditioning.input_size == 64 and conditioning.kernels > 0
    assert f"{conditioning.batchnorms} BatchNorm" in conditioning.description
    assert read_manifest(directory) == report.manifest
    assert verify_directory(directory).ok
    # A manifest without the record (written before conditioning existed) rebuilds unconditioned weights: the
    # rebuilt original no longer computes the golden outputs, while the artifacts still do.
    path = directory / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["weights"]["conditioning"]
    path.write_text(json.dumps(raw))
    assert read_manifest(directory).weights == replace(report.manifest.weights, conditioning=None)
    stale = verify_directory(directory)
    assert not stale.ok and stale.breaches[0].startswith("original: rel-L2"), stale.breaches
    assert next(row for row in stale.stages if row.stage == "onnx").parity.ok
