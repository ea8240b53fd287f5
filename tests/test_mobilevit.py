"""MobileViT v1/v2: key maps, converter constraints (rank ≤ 5), and the shared blocks they added.

Blocks are checked against timm's counterparts with the same weights. ``stress_weights`` only moves
BatchNorms and layer scales, so LayerNorm / GroupNorm affines are stressed here too: with their identity
init a swapped or misplaced norm would go unnoticed.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import make_divisible as timm_make_divisible
from timm.models.mobilevit import LinearSelfAttention, LinearTransformerBlock
from timm.models.vision_transformer import Attention, Block
from torch import nn

from deployforge.fuse import fuse_batchnorm
from deployforge.models import mobilevit, mobilevitv2
from deployforge.models.blocks import (
    ConvNorm,
    InvertedResidual,
    Mlp,
    MultiHeadSelfAttention,
    SeparableSelfAttention,
    TokenSelfAttention,
    TransformerLayer,
    fold_patches,
    make_divisible,
    unfold_patches,
)
from deployforge.registry import get_spec, list_models
from deployforge.stress import stress_weights

TOL = 1e-5
V1 = [s.name for s in list_models("mobilevit")]
V2 = [s.name for s in list_models("mobilevitv2")]
MAX_COREML_RANK = 5


@torch.no_grad()
def _stress_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Stress BNs (``stress_weights``) and LayerNorm / GroupNorm affines: weight ~U(0.75, 1.25), bias ~N(0, 0.1)."""
    torch.manual_seed(seed)
    stress_weights(module, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.75, 1.25, generator=generator))
            m.bias.copy_(torch.empty(m.bias.shape).normal_(0.0, 0.1, generator=generator))
    return module.eval()


def _load_from(ours: nn.Module, theirs: nn.Module, renames: dict[str, str] | None = None) -> nn.Module:
    state = theirs.state_dict()
    if renames:
        state = mobilevit.rename_components(state, renames)
    ours.load_state_dict(state, strict=True)
    return ours.eval()


# ---------------------------------------------------------------------------------------------- key maps


@pytest.mark.parametrize("name", V1 + V2)
def test_key_map_maps_timm_keys_onto_ours_exactly(name):
    spec = get_spec(name)
    assert spec.key_map is (mobilevit.key_map if name in V1 else mobilevitv2.key_map)
    with torch.device("meta"):  # keys and shapes only: no weights are materialized
        theirs = timm.create_model(spec.timm_name).state_dict()
        ours = spec.build().state_dict()
    mapped = spec.key_map(theirs)
    assert set(mapped) == set(ours), sorted(set(mapped) ^ set(ours))[:5]
    assert all(mapped[k].shape == v.shape for k, v in ours.items())
    assert set(theirs) != set(ours), "names differ from timm's, so the map must do something"


def test_key_map_is_pure_and_idempotent():
    state = {
        "stages.1.0.conv1_1x1.conv.weight": torch.ones(1),
        "stages.1.0.conv2_kxk.bn.running_mean": torch.zeros(1),
        "stages.1.0.conv3_1x1.bn.weight": torch.ones(2),
        "stages.2.1.transformer.0.attn.qkv_proj.weight": torch.ones(3),
        "stages.2.1.transformer.0.attn.out_proj.bias": torch.ones(4),
        "stages.2.1.conv_kxk.conv.weight": torch.ones(5),  # not an MV2 conv: unchanged
        "head.fc.weight": torch.ones(6),
    }
    before = dict(state)
    mapped = mobilevitv2.key_map(state)
    assert state == before, "the input must not be modified"
    assert list(mapped) == [
        "stages.1.0.conv_pw.conv.weight",
        "stages.1.0.conv_dw.bn.running_mean",
        "stages.1.0.conv_pwl.bn.weight",
        "stages.2.1.transformer.0.attn.qkv.weight",
        "stages.2.1.transformer.0.attn.proj.bias",
        "stages.2.1.conv_kxk.conv.weight",
        "head.fc.weight",
    ]
    assert all(m is s for m, s in zip(mapped.values(), state.values(), strict=True)), "keys only: same tensors"
    assert mobilevitv2.key_map(mapped) == mapped, "a state dict already in our naming passes through"
    # v1 has no separable attention: its map leaves those names alone (they never occur in v1)
    assert "stages.2.1.transformer.0.attn.qkv_proj.weight" in mobilevit.key_map(state)


def test_key_map_refuses_to_merge_keys():
    with pytest.raises(ValueError, match="merge"):
        mobilevit.key_map({"a.conv1_1x1.w": torch.ones(1), "a.conv_pw.w": torch.ones(1)})


# ------------------------------------------------------------------------------ converter constraints


def _node_ranks(program: torch.export.ExportedProgram) -> dict[str, int]:
    values = {node.name: node.meta.get("val") for node in program.graph.nodes if node.op == "call_function"}
    return {name: value.dim() for name, value in values.items() if isinstance(value, torch.Tensor)}


def _reshape_ranks(program: torch.export.ExportedProgram) -> list[int]:
    reshapes = {"view", "reshape", "_unsafe_view", "unsqueeze", "expand"}
    return [
        node.meta["val"].dim()
        for node in program.graph.nodes
        if node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in reshapes
    ]


def _exported(model: nn.Module, size: int = 64) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=64)
    example = torch.zeros(2, 3, size, size)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    return program.run_decompositions({})  # what the Core ML converter consumes


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_every_tensor_has_rank_at_most_5(name):
    """Core ML rejects rank > 5; timm's v2 unfold reshapes to rank 6, ours must not."""
    program = _exported(get_spec(name).build())
    reshape_ranks = _reshape_ranks(program)
    assert reshape_ranks and max(reshape_ranks) == MAX_COREML_RANK, "unfold/fold must show as rank-5 views"
    too_high = {n: r for n, r in _node_ranks(program).items() if r > MAX_COREML_RANK}
    assert not too_high, too_high


def test_rank_check_detects_timms_rank_6_unfold():
    """Positive control: the check above would catch timm's (non-coreml) v2 unfold."""
    program = _exported(timm.create_model("mobilevitv2_050"))
    assert max(_reshape_ranks(program)) == 6


# ------------------------------------------------------------------------------------ patches (unfold)


@pytest.mark.parametrize(("h", "w", "p"), [(8, 8, 2), (6, 10, 2), (12, 8, 4), (9, 6, 3)])
def test_unfold_matches_the_rank_6_formulation_and_fold_inverts_it(h, w, p, make_inputs):
    x = torch.randn(3, 5, h, w, generator=torch.Generator().manual_seed(h * w))
    nh, nw = h // p, w // p
    reference = x.reshape(3, 5, nh, p, nw, p).permute(0, 1, 3, 5, 2, 4).reshape(3, 5, p * p, nh * nw)
    patches = unfold_patches(x, p, p)
    assert torch.equal(patches, reference)
    assert torch.equal(fold_patches(patches, p, p, nh, nw), x)


def test_unfold_rejects_partial_patches():
    with pytest.raises(ValueError, match="tile"):
        unfold_patches(torch.zeros(1, 2, 5, 4), 2, 2)


# ------------------------------------------------------------------------------------------ ConvNorm


def test_conv_norm_activation_keeps_keys_and_fuses(rel_l2, make_inputs):
    plain, activated = ConvNorm(8, 16, 3, stride=2, groups=2), ConvNorm(8, 16, 3, stride=2, groups=2, act_layer=nn.SiLU)
    assert list(plain.state_dict()) == list(activated.state_dict())
    block = _stress_norms(activated)
    x = make_inputs(batch=2, size=9, channels=8)
    with torch.no_grad():
        assert torch.equal(block(x), nn.functional.silu(block.bn(block.conv(x))))
        fused, report = fuse_batchnorm(block, x)
        assert report.folded == [("conv", "bn")]
        assert rel_l2(fused(x), block(x)) <= TOL
    with pytest.raises(ValueError, match="SiLU"):
        block.kernel_bias()  # with an activation it is not a linear branch


# ---------------------------------------------------------------------------------------- MV2 block


@pytest.mark.parametrize("value", [8, 12, 20, 24.5, 36, 48, 56 * 2, 7, 100, 0.5 * 288])
def test_make_divisible_matches_timm(value):
    assert make_divisible(value) == timm_make_divisible(value)


@pytest.mark.parametrize(
    ("in_chs", "out_chs", "stride", "skip"), [(16, 16, 1, True), (16, 24, 1, False), (16, 16, 2, False)]
)
def test_inverted_residual_fuses_every_bn(in_chs, out_chs, stride, skip, rel_l2, make_inputs, bn_count):
    block = _stress_norms(InvertedResidual(in_chs, out_chs, stride, expansion=2.0))
    assert block.has_skip is skip
    assert block.conv_pw.conv.out_channels == 32 and block.conv_dw.conv.groups == 32
    x = make_inputs(batch=2, size=10, channels=in_chs)
    with torch.no_grad():
        fused, report = fuse_batchnorm(block, x)
        assert len(report.folded) == 3 and bn_count(fused) == 0
        assert rel_l2(fused(x), block(x)) <= TOL
        out = block(x)
        expected = block.conv_pwl(block.conv_dw(block.conv_pw(x)))
        assert torch.equal(out, expected + x if skip else expected)


# ------------------------------------------------------------------------------------------ attention


def test_token_attention_matches_timm(rel_l2):
    torch.manual_seed(0)
    theirs = Attention(80, num_heads=4, qkv_bias=True).eval()
    ours = _load_from(TokenSelfAttention(80, head_dim=20, qkv_bias=True), theirs)
    tokens = torch.randn(6, 17, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_l2(ours(tokens), theirs(tokens)) <= TOL


def test_feature_map_attention_is_token_attention_on_positions(make_inputs):
    torch.manual_seed(0)
    tokens_attn = TokenSelfAttention(32, head_dim=8).eval()
    map_attn = _load_from(MultiHeadSelfAttention(32, head_dim=8), tokens_attn)
    assert list(map_attn.state_dict()) == ["qkv.weight", "proj.weight", "proj.bias"]  # FastViT's keys
    x = make_inputs(batch=2, size=5, channels=32)
    with torch.no_grad():
        from_tokens = tokens_attn(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape)
        assert torch.equal(map_attn(x), from_tokens)


def test_separable_attention_matches_timm(rel_l2):
    torch.manual_seed(0)
    theirs = LinearSelfAttention(48).eval()
    ours = _load_from(SeparableSelfAttention(48), theirs, mobilevitv2.V2_RENAMES)
    x = torch.randn(2, 48, 4, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_l2(ours(x), theirs(x)) <= TOL


def test_separable_attention_mixes_tokens_of_one_patch_position_only():
    torch.manual_seed(0)
    attention = SeparableSelfAttention(16).eval()
    x = torch.randn(1, 16, 4, 9, generator=torch.Generator().manual_seed(3))
    changed = x.clone()
    changed[:, :, 1, 0] += 1.0  # one token of position p = 1
    with torch.no_grad():
        before, after = attention(x), attention(changed)
    moved = (after - before).abs().amax(dim=(0, 1, 3))
    assert moved[1] > 1e-3 and moved[[0, 2, 3]].max() == 0, "positions are independent; tokens of p=1 all move"
    assert (after - before)[:, :, 1].abs().amax(dim=1).min() > 0


# --------------------------------------------------------------------------------- MLP / transformer


def test_linear_and_pointwise_conv_mlp_agree(rel_l2):
    torch.manual_seed(0)
    linear = Mlp(12, 24, nn.SiLU).eval()
    conv = Mlp(12, 24, nn.SiLU, channels_first=True).eval()
    conv.load_state_dict({k: v.reshape(*v.shape, 1, 1) if v.dim() == 2 else v for k, v in linear.state_dict().items()})
    x = torch.randn(2, 12, 3, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_l2(conv(x), linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)) <= TOL


def test_transformer_layer_v1_matches_timm_block(rel_l2):
    torch.manual_seed(0)
    theirs = _stress_norms(Block(64, num_heads=4, mlp_ratio=2.0, qkv_bias=True, act_layer=nn.SiLU), seed=1)
    ours = TransformerLayer(
        nn.LayerNorm(64), TokenSelfAttention(64, head_dim=16, qkv_bias=True), nn.LayerNorm(64), Mlp(64, 128, nn.SiLU)
    )
    _load_from(ours, theirs)
    tokens = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert rel_l2(ours(tokens), theirs(tokens)) <= TOL
        # stressed norms matter: with identity norms the output differs
        plain = copy.deepcopy(ours)
        plain.norm1.reset_parameters()
        assert rel_l2(plain(tokens), theirs(tokens)) > 1e-3


def test_transformer_layer_v2_matches_timm_block(rel_l2):
    torch.manual_seed(0)
    theirs = _stress_norms(LinearTransformerBlock(48, mlp_ratio=2.0, act_layer=nn.SiLU), seed=2)
    ours = TransformerLayer(
        nn.GroupNorm(1, 48), SeparableSelfAttention(48), nn.GroupNorm(1, 48), Mlp(48, 96, nn.SiLU, channels_first=True)
    )
    _load_from(ours, theirs, mobilevitv2.V2_RENAMES)
    x = torch.randn(2, 48, 4, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_l2(ours(x), theirs(x)) <= TOL
        plain = copy.deepcopy(ours)
        plain.norm2.reset_parameters()
        assert rel_l2(plain(x), theirs(x)) > 1e-3


# ------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize(("name", "size"), [("mobilevit_xxs", 96), ("mobilevitv2_050", 96), ("mobilevitv2_125", 64)])
def test_whole_model_matches_timm_with_stressed_norms(name, size, rel_l2, make_inputs):
    """Every norm stressed; 96 px leaves a 3×3 map in stage 4, exercising the resize-to-whole-patches path."""
    spec = get_spec(name)
    theirs = _stress_norms(timm.create_model(spec.timm_name), seed=3)
    ours = spec.build()
    ours.load_state_dict(spec.key_map(theirs.state_dict()), strict=True)
    x = make_inputs(batch=2, size=size, seed=7)
    with torch.no_grad():
        assert rel_l2(ours.eval()(x), theirs(x)) <= TOL


def test_v2_widths_follow_alpha_as_data():
    specs = list_models("mobilevitv2")
    assert [spec.config.alpha for spec in specs] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    for spec in specs:
        config = spec.config
        assert isinstance(config, mobilevitv2.MobileViTV2Config)
        alpha = config.alpha
        assert spec.name == f"mobilevitv2_{round(alpha * 100):03d}"
        model = spec.build()
        assert model.stem.conv.out_channels == int(32 * alpha)
        assert [stage[0].conv_pwl.conv.out_channels for stage in model.stages] == list(config.widths)
        assert [stage[1].conv_1x1.out_channels for stage in model.stages[2:]] == [c // 2 for c in config.widths[2:]]
        assert model.head.fc.in_features == int(512 * alpha)


def test_registry_entries():
    for name in V1 + V2:
        spec = get_spec(name)
        assert spec.input_size == 256 and spec.timm_name == name
        assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)  # timm's cfg: [0, 1] RGB input
