"""MobileOne family: timm key map, train/deploy sizes, over-parameterization, SE placement, full merge."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from deployforge.measure import torch_params
from deployforge.models import mobileone
from deployforge.models.blocks import MobileOneBlock, SqueezeExcite
from deployforge.registry import get_spec, list_models
from deployforge.reparam import reparameterize

NAMES = [s.name for s in list_models("mobileone")]


def test_family_is_registered():
    assert NAMES == ["mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4"]
    assert all(get_spec(n).key_map is mobileone.key_map for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_key_map_covers_every_timm_key_once_and_loads_strictly(name):
    spec = get_spec(name)
    state = timm.create_model(spec.timm_name).state_dict()
    before = list(state)
    mapped = spec.key_map(state)
    assert list(state) == before, "the key map must not mutate its input"
    assert len(mapped) == len(state), "two timm keys were mapped onto the same key"
    ours = spec.build()
    assert set(mapped) == set(ours.state_dict())
    # keys only: each tensor arrives unchanged under the name its own key maps to
    assert all(mapped[next(iter(spec.key_map({k: v})))] is v for k, v in state.items())
    ours.load_state_dict(mapped, strict=True)
    # our own names pass through unchanged, so a state dict saved from our model loads too
    assert spec.key_map(ours.state_dict()).keys() == ours.state_dict().keys()


def test_key_map_renames_only_the_se_module():
    state = {
        "stages.2.10.attn.fc1.weight": torch.zeros(1),
        "stages.2.10.conv_kxk.0.bn.running_var": torch.zeros(1),
        "stem.conv_scale.conv.weight": torch.zeros(1),
        "head.fc.bias": torch.zeros(1),
    }
    assert list(mobileone.key_map(state)) == [
        "stages.2.10.se.fc1.weight",
        "stages.2.10.conv_kxk.0.bn.running_var",
        "stem.conv_scale.conv.weight",
        "head.fc.bias",
    ]


def test_s0_train_and_deployed_params():
    model = get_spec("mobileone_s0").build()
    assert torch_params(model) == pytest.approx(5.293e6, rel=1e-3)
    merged, _ = reparameterize(model)
    assert torch_params(merged) == pytest.approx(2.079e6, rel=1e-3)


@pytest.mark.parametrize(("name", "branches"), [("mobileone_s0", 4), ("mobileone_s1", 1), ("mobileone_s4", 1)])
def test_over_parameterized_branches(name, branches):
    model = get_spec(name).build()
    assert len(model.stem.conv_kxk) == 1  # the stem is never over-parameterized
    stage_blocks = [m for m in model.stages.modules() if isinstance(m, MobileOneBlock)]
    assert len(stage_blocks) == 2 * sum(mobileone.DEPTHS)
    assert all(len(b.conv_kxk) == branches for b in stage_blocks)
    assert {b.kernel_size for b in stage_blocks} == {1, 3}


def test_s4_has_se_exactly_where_timm_does():
    model = get_spec("mobileone_s4").build()
    ours = {
        name for name, m in model.named_modules() if isinstance(m, MobileOneBlock) and isinstance(m.se, SqueezeExcite)
    }
    reference = timm.create_model("mobileone_s4")
    theirs = {
        name
        for name, m in reference.named_modules()
        if hasattr(m, "attn") and not isinstance(m.attn, torch.nn.Identity)
    }
    assert ours == theirs
    assert len(ours) == 2 * (5 + 1)  # last 5 units of stage 2, last unit of stage 3, both blocks of each
    assert all(m.se.fc1.out_channels == m.out_chs // 16 for n, m in model.named_modules() if n in ours)
    assert not any(isinstance(m, SqueezeExcite) for m in get_spec("mobileone_s3").build().modules())


@pytest.mark.parametrize("name", ["mobileone_s0", "mobileone_s4"])
def test_reparameterize_leaves_one_conv_per_block(name, stressed_original, make_inputs, rel_l2):
    original = stressed_original(name)
    merged, count = reparameterize(original)
    blocks = [m for m in merged.modules() if isinstance(m, MobileOneBlock)]
    assert count.branches > len(blocks)
    for block in blocks:
        assert block.conv_kxk is None and block.conv_scale is None and block.identity is None
        assert isinstance(block.reparam_conv, torch.nn.Conv2d)
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 1 + (2 if isinstance(block.se, SqueezeExcite) else 0)
    x = make_inputs(batch=2)
    with torch.no_grad():
        assert rel_l2(merged(x), original(x)) <= 1e-5


def test_random_weight_s4_is_well_conditioned_in_float32(stressed_original, make_inputs, rel_l2):
    """Guards the builder's conv init: with PyTorch's default init, S4's SE gates sit where sigmoid amplifies
    float32 rounding, and float32 alone drifts 1e-4 … 4e-3 from float64, failing every parity check."""
    original = stressed_original("mobileone_s4")
    x = make_inputs(batch=2)
    with torch.no_grad():
        exact = copy.deepcopy(original).double()(x.double())
        assert rel_l2(original(x), exact) <= 2e-6
