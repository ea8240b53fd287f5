"""Unit tests of the reparameterization algebra and every reparameterizable block (stressed weights)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deployforge.models.blocks import (
    LayerScale2d,
    MergeCount,
    MobileOneBlock,
    MultiHeadSelfAttention,
    ReparamLargeKernelConv,
    RepCPE,
    RepMixer,
    SqueezeExcite,
    conv_like,
    fold_bn,
    fold_layer_scale,
    identity_kernel,
    pad_kernel,
)
from deployforge.stress import stress_weights

TOL = 1e-5


def _stressed(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return stress_weights(module, seed=seed).eval()


def _no_batchnorm(module: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _check_reparam(block: nn.Module, x: torch.Tensor, rel_l2) -> MergeCount:
    """Reparameterize ``block`` in place; check equivalence and idempotence; return the first count."""
    with torch.no_grad():
        before = block(x)
        count = block.reparameterize()
        after = block(x)
        assert rel_l2(after, before) <= TOL
        again = block.reparameterize()
        assert again == MergeCount()
        assert torch.equal(block(x), after), "second reparameterize() changed the output"
    assert _no_batchnorm(block)
    return count


# ---------------------------------------------------------------------------------------------- algebra


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_fold_bn_matches_conv_bn(bias, groups, stride, rel_l2, make_inputs):
    pair = _stressed(nn.Sequential(nn.Conv2d(8, 16, 3, stride, 1, groups=groups, bias=bias), nn.BatchNorm2d(16)))
    conv, bn = pair
    x = make_inputs(batch=2, size=15, channels=8)
    conv_w, conv_b = conv.weight.clone(), None if conv.bias is None else conv.bias.clone()
    bn_state = {k: v.clone() for k, v in bn.state_dict().items()}

    weight, b = fold_bn(conv.weight, conv.bias, bn)
    folded = conv_like(conv, weight, b)
    with torch.no_grad():
        reference = pair(x)
        assert rel_l2(conv(x), reference) > 1e-2, "stressed BN should not be an identity"
        assert rel_l2(folded(x), reference) <= TOL
    # pure: the inputs are not modified
    assert torch.equal(conv.weight, conv_w)
    assert conv_b is None or torch.equal(conv.bias, conv_b)
    assert all(torch.equal(v, bn_state[k]) for k, v in bn.state_dict().items())


@pytest.mark.parametrize("bias", [False, True])
def test_fold_bn_matches_linear_bn1d(bias, rel_l2):
    pair = _stressed(nn.Sequential(nn.Linear(12, 20, bias=bias), nn.BatchNorm1d(20)))
    linear, bn = pair
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(3))
    weight, b = fold_bn(linear.weight, linear.bias, bn)
    folded = nn.Linear(12, 20)
    folded.weight, folded.bias = nn.Parameter(weight), nn.Parameter(b)
    with torch.no_grad():
        assert rel_l2(folded(x), pair(x)) <= TOL


def test_fold_bn_identity_returns_copies_with_bias():
    conv = nn.Conv2d(4, 6, 3, bias=False)
    weight, bias = fold_bn(conv.weight, conv.bias, nn.Identity())
    assert torch.equal(weight, conv.weight.detach())
    assert weight.data_ptr() != conv.weight.data_ptr()
    assert torch.equal(bias, torch.zeros(6))


def test_fold_bn_rejects_non_batchnorm():
    conv = nn.Conv2d(4, 6, 3)
    with pytest.raises(TypeError):
        fold_bn(conv.weight, conv.bias, nn.ReLU())


@pytest.mark.parametrize(("small", "size"), [(1, 3), (1, 7), (3, 7), (3, 5), (3, 3)])
def test_pad_kernel_centres_and_is_equivalent(small, size, rel_l2, make_inputs):
    kernel = torch.randn(5, 2, small, small, generator=torch.Generator().manual_seed(small * size))
    padded = pad_kernel(kernel, size)
    assert padded.shape == (5, 2, size, size)
    p = (size - small) // 2
    assert torch.equal(padded[..., p : p + small, p : p + small], kernel)
    border = torch.ones(size, size, dtype=torch.bool)
    border[p : p + small, p : p + small] = False
    assert not padded[..., border].any(), "padding must be zeros"
    x = make_inputs(batch=2, size=11, channels=2)
    for stride in (1, 2):
        small_out = nn.functional.conv2d(x, kernel, stride=stride, padding=small // 2)
        padded_out = nn.functional.conv2d(x, padded, stride=stride, padding=size // 2)
        assert rel_l2(padded_out, small_out) <= TOL


@pytest.mark.parametrize(("small", "size"), [(3, 6), (7, 3), (3, 4)])
def test_pad_kernel_rejects_uncentrable(small, size):
    with pytest.raises(ValueError):
        pad_kernel(torch.ones(1, 1, small, small), size)


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("size", [1, 3, 7])
def test_identity_kernel_copies_input(groups, size, make_inputs):
    kernel = identity_kernel(8, groups, size)
    assert kernel.shape == (8, 8 // groups, size, size)
    assert kernel.sum() == 8, "exactly one 1 per output channel"
    x = make_inputs(batch=2, size=9, channels=8)
    out = nn.functional.conv2d(x, kernel, padding=size // 2, groups=groups)
    assert torch.equal(out, x)


# --------------------------------------------------------------------------------------- MobileOneBlock

MOBILEONE_CASES = {
    # id: (in, out, kernel, stride, groups, k branches, se, act)
    "k1-3x3-all-branches": (8, 8, 3, 1, 1, 1, False, nn.GELU),
    "k4-3x3-all-branches": (8, 8, 3, 1, 1, 4, False, nn.GELU),
    "k4-3x3-widen-no-identity": (8, 16, 3, 1, 1, 4, False, nn.ReLU),
    "k1-3x3-stride2": (8, 8, 3, 2, 1, 1, False, nn.GELU),
    "k4-3x3-stride2-widen": (8, 16, 3, 2, 1, 4, False, None),
    "k1-grouped": (8, 8, 3, 1, 2, 1, False, nn.GELU),
    "k4-grouped-stride2": (8, 16, 3, 2, 4, 4, False, nn.GELU),
    "k1-depthwise": (8, 8, 3, 1, 8, 1, False, nn.GELU),
    "k4-depthwise": (8, 8, 3, 1, 8, 4, False, None),
    "k4-depthwise-stride2": (8, 8, 3, 2, 8, 4, False, nn.GELU),
    "k1-1x1": (8, 8, 1, 1, 1, 1, False, nn.GELU),
    "k4-1x1-widen": (8, 16, 1, 1, 1, 4, False, nn.GELU),
    "k1-se-widen": (8, 16, 3, 1, 1, 1, True, nn.GELU),
    "k4-depthwise-se": (8, 8, 3, 1, 8, 4, True, nn.ReLU),
    "k1-stem-3-channels": (3, 8, 3, 2, 1, 1, False, nn.GELU),
}


@pytest.mark.parametrize("case", MOBILEONE_CASES.values(), ids=MOBILEONE_CASES.keys())
def test_mobileone_block_reparameterize(case, rel_l2, make_inputs):
    in_chs, out_chs, kernel, stride, groups, branches, se, act = case
    block = _stressed(
        MobileOneBlock(
            in_chs,
            out_chs,
            kernel,
            stride=stride,
            groups=groups,
            num_conv_branches=branches,
            se=SqueezeExcite(out_chs, 4) if se else None,
            act_layer=act,
        )
    )
    x = make_inputs(batch=2, size=15, channels=in_chs)
    has_identity = in_chs == out_chs and stride == 1
    assert (block.identity is not None) == has_identity
    count = _check_reparam(block, x, rel_l2)
    assert count == MergeCount(branches=branches + (kernel > 1) + has_identity)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * se  # the merged conv (+ SE's two 1x1 convs)
    merged = block.reparam_conv
    assert merged.groups == groups and merged.stride == (stride, stride)
    assert merged.weight.shape == (out_chs, in_chs // groups, kernel, kernel)


def test_mobileone_identity_only_block(rel_l2, make_inputs):
    """FastViT's RepMixer ``norm``: no conv branch, only the BN identity branch."""
    block = _stressed(MobileOneBlock(8, 8, 3, groups=8, num_conv_branches=0, use_scale_branch=False, act_layer=None))
    x = make_inputs(batch=2, size=9, channels=8)
    with torch.no_grad():
        assert rel_l2(block(x), x) > 1e-2, "stressed BN should not be an identity"
    assert _check_reparam(block, x, rel_l2) == MergeCount(branches=1)


# ------------------------------------------------------------------------------- ReparamLargeKernelConv

LARGE_KERNEL_CASES = {
    # id: (in, out, kernel, stride, groups, small kernel, act)
    "patch-embed-depthwise-stride2": (8, 8, 7, 2, 8, 3, None),
    "dense-widen-act": (8, 16, 7, 1, 1, 3, nn.GELU),
    "grouped-stride2-5x5": (8, 8, 5, 2, 2, 3, nn.ReLU),
    "small-1x1": (8, 8, 7, 1, 8, 1, None),
    "large-only": (8, 8, 7, 2, 8, None, None),
}


@pytest.mark.parametrize("case", LARGE_KERNEL_CASES.values(), ids=LARGE_KERNEL_CASES.keys())
def test_reparam_large_kernel_conv(case, rel_l2, make_inputs):
    in_chs, out_chs, kernel, stride, groups, small, act = case
    block = _stressed(
        ReparamLargeKernelConv(in_chs, out_chs, kernel, stride, groups, small_kernel=small, act_layer=act)
    )
    x = make_inputs(batch=2, size=17, channels=in_chs)
    count = _check_reparam(block, x, rel_l2)
    assert count == MergeCount(branches=2 if small else 1)
    merged = block.reparam_conv
    assert merged.kernel_size == (kernel, kernel) and merged.groups == groups
    assert merged.stride == (stride, stride)
    assert [m for m in block.modules() if isinstance(m, nn.Conv2d)] == [merged]


# ------------------------------------------------------------------------------------- RepMixer / RepCPE


@pytest.mark.parametrize("layer_scale_init", [1e-5, None], ids=["layer-scale", "no-layer-scale"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_repmixer(layer_scale_init, kernel, rel_l2, make_inputs):
    block = _stressed(RepMixer(16, kernel, layer_scale_init=layer_scale_init))
    if layer_scale_init is not None:
        gamma = block.layer_scale.gamma
        assert gamma.min() >= 0.1 and gamma.max() <= 0.6, "layer scale must be stressed away from init"
    x = make_inputs(batch=2, size=12, channels=16)
    with torch.no_grad():
        assert rel_l2(block(x), x) > 1e-2, "the mixer must not be close to the skip connection alone"
    count = _check_reparam(block, x, rel_l2)
    assert count.layer_scales == (layer_scale_init is not None)
    assert count.branches > 0
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [block.reparam_conv] and convs[0].groups == 16
    assert not any(isinstance(m, LayerScale2d) for m in block.modules())


@pytest.mark.parametrize("kernel", [3, 7])
def test_repcpe(kernel, rel_l2, make_inputs):
    block = _stressed(RepCPE(16, kernel))
    x = make_inputs(batch=2, size=10, channels=16)
    count = _check_reparam(block, x, rel_l2)
    assert count == MergeCount(branches=2)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [block.reparam_conv] and convs[0].groups == 16


# ------------------------------------------------------------------------------ attention / layer scale


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_attention_absorb_input_norm(qkv_bias, rel_l2, make_inputs):
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(64, head_dim=16, qkv_bias=qkv_bias).eval()
    norm = _stressed(nn.BatchNorm2d(64))
    norm_state = {k: v.clone() for k, v in norm.state_dict().items()}
    x = make_inputs(batch=2, size=5, channels=64)
    with torch.no_grad():
        reference = attention(norm(x))
        assert rel_l2(attention(x), reference) > 1e-2, "stressed BN should not be an identity"
        folded = copy.deepcopy(attention)
        assert folded.absorb_input_norm(norm) is True
        assert rel_l2(folded(x), reference) <= TOL
    assert all(torch.equal(v, norm_state[k]) for k, v in norm.state_dict().items())


def test_attention_absorb_identity_is_noop(make_inputs):
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(32, head_dim=16).eval()
    qkv = attention.qkv
    assert attention.absorb_input_norm(nn.Identity()) is False
    assert attention.qkv is qkv


@pytest.mark.parametrize("bias", [False, True])
def test_fold_layer_scale_into_conv(bias, rel_l2, make_inputs):
    pair = _stressed(nn.Sequential(nn.Conv2d(8, 16, 1, bias=bias), LayerScale2d(16)))
    conv, scale = pair
    assert scale.gamma.min() >= 0.1, "layer scale must be stressed away from init"
    x = make_inputs(batch=2, size=6, channels=8)
    with torch.no_grad():
        reference = pair(x)
        folded = copy.deepcopy(conv)
        assert fold_layer_scale(scale, folded) is True
        assert rel_l2(folded(x), reference) <= TOL
        assert fold_layer_scale(nn.Identity(), folded) is False
        assert rel_l2(folded(x), reference) <= TOL


def test_fold_layer_scale_into_linear_projection(rel_l2, make_inputs):
    """As in the attention block: a token projection ``(B, N, C)`` reshaped to ``(B, C, H, W)``, then γ."""
    torch.manual_seed(0)
    proj = nn.Linear(16, 16)
    scale = _stressed(nn.Sequential(LayerScale2d(16)))[0]
    tokens = make_inputs(batch=2, size=4, channels=16).flatten(2).transpose(1, 2)  # (2, 16 tokens, 16)

    def to_map(y: torch.Tensor) -> torch.Tensor:
        return y.transpose(1, 2).reshape(2, 16, 4, 4)

    with torch.no_grad():
        reference = scale(to_map(proj(tokens)))
        assert fold_layer_scale(scale, proj) is True
        assert rel_l2(to_map(proj(tokens)), reference) <= TOL
