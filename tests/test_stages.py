"""Per registered model: fuse → reparameterize → trace keep parity, never mutate, and are idempotent."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import timm
import torch
from torch import nn

from deployforge.fuse import FuseReport, fuse_batchnorm
from deployforge.models.blocks import MergeCount, Reparameterizable
from deployforge.parity import compare
from deployforge.registry import get_spec, list_models
from deployforge.reparam import reparameterize
from deployforge.stress import stress_weights
from deployforge.trace import Traced, trace

TOL = 1e-5
NAMES = [s.name for s in list_models()]
MODELS = [pytest.param(s.name, marks=pytest.mark.slow) if s.reference.params_m > 20 else s.name for s in list_models()]


@dataclass
class Stages:
    """The stage outputs for one model, with a snapshot of each stage's input taken just before the call."""

    original: nn.Module
    inputs: torch.Tensor
    reference: torch.Tensor
    fused: nn.Module
    fuse_report: FuseReport
    merged: nn.Module
    merge_count: MergeCount
    traced: Traced
    inputs_before: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]]


def _multi_branch(model: nn.Module) -> bool:
    """Whether the model has a block the reparameterize stage merges (MobileOne, RepMixer, ...)."""
    return any(isinstance(m, Reparameterizable) for m in model.modules())


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=MODELS)
def name(request) -> str:
    """A registered model name; module scope groups each model's tests (one pipeline run per worker)."""
    return request.param


@pytest.fixture(scope="module")
def stages(name, stressed_original, make_inputs, input_side) -> Stages:
    original = copy.deepcopy(stressed_original(name))  # private copy: only the stages touch it
    inputs = make_inputs(batch=4, size=input_side(name))
    with torch.no_grad():
        reference = original(inputs)
    before = {}
    before["fuse_batchnorm"] = (original, _snapshot(original))
    fused, report = fuse_batchnorm(original, inputs[:2])
    before["reparameterize"] = (fused, _snapshot(fused))
    merged, count = reparameterize(fused)
    before["trace"] = (merged, _snapshot(merged))
    traced = trace(merged, inputs[:2])
    return Stages(original, inputs, reference, fused, report, merged, count, traced, before)


def test_registry_is_not_empty():
    assert NAMES, "no model registered"


def test_stage_parity(name, stages):
    s = stages
    assert s.fuse_report.folded, "the fuse stage folded nothing"
    if _multi_branch(s.original):
        assert s.merge_count != MergeCount(), "the reparameterize stage merged nothing"
    else:  # single-path families (MobileViT): nothing to merge, and the stage must not claim otherwise
        assert s.merge_count == MergeCount(), f"{name} has no reparameterizable block, yet {s.merge_count}"
    candidates = {"fuse": s.fused, "reparameterize": s.merged, "trace": s.traced.module()}
    with torch.no_grad():
        for stage, model in candidates.items():
            parity = compare(model(s.inputs).numpy(), s.reference.numpy(), TOL)
            assert parity.ok, f"{name} {stage}: rel-L2 {parity.rel_l2:.3g} > {TOL}"
            assert parity.top1 == 1.0


def test_trace_has_dynamic_batch(stages, make_inputs, rel_l2):
    module = stages.traced.module()
    with torch.no_grad():
        for batch in (1, 3):
            x = make_inputs(batch=batch, size=stages.inputs.shape[-1], seed=batch)
            assert rel_l2(module(x), stages.original(x)) <= TOL


def test_stages_do_not_mutate_input(stages):
    for stage, (model, snapshot) in stages.inputs_before.items():
        state = model.state_dict()
        assert list(state) == list(snapshot), f"{stage} changed its input's structure"
        changed = [k for k, v in state.items() if not torch.equal(v, snapshot[k])]
        assert not changed, f"{stage} modified its input: {changed[:5]}"


def test_fuse_twice_folds_nothing(stages):
    again, report = fuse_batchnorm(stages.fused, stages.inputs[:2])
    assert report.folded == []
    with torch.no_grad():
        assert torch.equal(again(stages.inputs), stages.fused(stages.inputs))


def test_reparameterize_twice_merges_nothing(stages):
    again, count = reparameterize(stages.merged)
    assert count == MergeCount(branches=0, layer_scales=0, norms=0)
    with torch.no_grad():
        assert torch.equal(again(stages.inputs), stages.merged(stages.inputs))


def test_no_batchnorm_after_fuse_and_reparameterize(stages, bn_count):
    assert bn_count(stages.original) > 0
    assert bn_count(stages.merged) == 0
    # and the captured graph holds no batch-norm op either
    assert "batch_norm" not in str(stages.traced.module().graph)


# ------------------------------------------------------------------------------- single-consumer rule


def test_fuse_respects_single_consumer_on_timm_sa12(make_inputs, rel_l2):
    """timm's reparameterized SA12: RepCPE's conv feeds both the attention BN and the residual."""
    torch.manual_seed(0)
    model = stress_weights(timm.create_model("fastvit_sa12").eval(), seed=0)
    reparam = timm.utils.reparameterize_model(model).eval()
    x = make_inputs(batch=2)
    fused, report = fuse_batchnorm(reparam, x)

    norm = "stages.3.blocks.0.norm"
    assert norm not in {bn for _, bn in report.folded}
    assert norm in report.skipped and "consumers" in report.skipped[norm]
    assert isinstance(fused.get_submodule(norm), nn.BatchNorm2d)
    assert report.folded, "the ConvMlp conv→BN pairs timm leaves must still be folded"
    with torch.no_grad():
        reference = model(x)
        assert rel_l2(reparam(x), reference) <= TOL
        assert rel_l2(fused(x), reference) <= TOL
        assert rel_l2(fused(x), reparam(x)) <= TOL


class _SharedConvOutput(nn.Module):
    """``bn(conv(x)) + conv(x)``: the conv output has two consumers, so the BN must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _ConvThenBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.bn1d = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1d(self.fc(self.bn(self.conv(x)).mean((2, 3))))


def test_fuse_skips_conv_with_two_consumers(make_inputs, rel_l2):
    torch.manual_seed(0)
    model = stress_weights(_SharedConvOutput()).eval()
    x = make_inputs(batch=2, size=8, channels=4)
    fused, report = fuse_batchnorm(model, x)
    assert report.folded == []
    assert "bn" in report.skipped and "consumers" in report.skipped["bn"]
    assert isinstance(fused.bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert rel_l2(fused(x), model(x)) <= TOL


def test_fuse_folds_single_consumer_pairs(make_inputs, rel_l2, bn_count):
    """Positive control for the test above: conv→BN2d and linear→BN1d with one consumer are folded."""
    torch.manual_seed(0)
    model = stress_weights(_ConvThenBN()).eval()
    x = make_inputs(batch=3, size=8, channels=4)
    fused, report = fuse_batchnorm(model, x)
    assert sorted(report.folded) == [("conv", "bn"), ("fc", "bn1d")]
    assert report.skipped == {}
    assert bn_count(fused) == 0 and bn_count(model) == 2
    with torch.no_grad():
        assert rel_l2(fused(x), model(x)) <= TOL


# ------------------------------------------------------------------------ the export's shared capture

ONE_PER_FAMILY = ["fastvit_t8", "mobileone_s0", "mobilevit_xxs", "mobilevitv2_050"]


@pytest.mark.parametrize("model_name", ONE_PER_FAMILY)
def test_fuse_on_the_shared_capture(model_name, stressed_original, make_inputs):
    """The export captures the original once (dynamic batch) and finds the fuse pairs on that program: the same
    pairs as the fuse stage's own capture, the input untouched, and the program still the original's."""
    original = stressed_original(model_name)
    x = make_inputs(batch=2)
    snapshot = _snapshot(original)
    captured = trace(original, x)
    own, own_report = fuse_batchnorm(original, x)
    shared, shared_report = fuse_batchnorm(original, x, captured.program)
    assert shared_report == own_report
    assert shared_report.folded, "the fuse stage folded nothing"
    state = original.state_dict()
    assert all(torch.equal(v, snapshot[k]) for k, v in state.items()), "fuse modified its input"
    with torch.no_grad():
        assert torch.equal(shared(x), own(x))
        again, report = fuse_batchnorm(shared, x, trace(shared, x).program)
        assert report.folded == [] and torch.equal(again(x), shared(x))
        y = make_inputs(batch=3, seed=3)  # the multi-branch ONNX is exported from this program afterwards
        assert torch.equal(captured.module()(y), original(y))


def test_get_spec_is_what_list_models_lists():
    assert [get_spec(n).name for n in NAMES] == NAMES
