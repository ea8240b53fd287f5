"""Mobile-Former: sizes against the authors' code, their checkpoint naming, and the token paths.

timm has no Mobile-Former, so this family's oracle is (a) the sizes measured on the authors' code, exact to
the parameter and the MAC, in total and per block (``../shared/families/mobileformer.md`` §4–5), (b) a
state dict in the authors' naming loading strictly through the key map, and (c) structural tests showing
that the tokens really drive the dynamic ReLUs and both bridges, and that one pixel reaches the tokens.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deployforge.fuse import fuse_batchnorm
from deployforge.measure import torch_macs, torch_params
from deployforge.models import mobileformer
from deployforge.models.blocks.bridge import Former, FormerToMobile, MobileToFormer
from deployforge.models.blocks.channel_shuffle import ChannelShuffle
from deployforge.models.blocks.dynamic_relu import DynamicReLU
from deployforge.options import Precision
from deployforge.registry import get_spec, list_models
from deployforge.reparam import reparameterize, reparameterize_structure

NAMES = [s.name for s in list_models("mobileformer")]
SIZES = ["26m", "52m", "96m", "151m", "214m", "294m", "508m"]
# This family's oracle (no timm twin), selected by tests/test_registry.py: the sizes of the authors' code and the
# structural tests of the token paths.
STRUCTURAL_ORACLE = pytest.mark.structural_oracle

# Measured on the authors' code at 224 px (fact sheet §5): parameters, and MACs of conv + linear + attention
# matmuls from torch.utils.flop_counter (our counter, the same convention).
AUTHORS_PARAMS = {
    "mobileformer_26m": 3_232_788,
    "mobileformer_52m": 3_469_092,
    "mobileformer_96m": 4_585_252,
    "mobileformer_151m": 7_595_828,
    "mobileformer_214m": 9_425_920,
    "mobileformer_294m": 11_422_648,
    "mobileformer_508m": 13_976_976,
}
AUTHORS_MACS = {
    "mobileformer_26m": 23_550_208,
    "mobileformer_52m": 49_290_496,
    "mobileformer_96m": 92_017_040,
    "mobileformer_151m": 146_249_168,
    "mobileformer_214m": 208_374_240,
    "mobileformer_294m": 286_732_160,
    "mobileformer_508m": 498_467_680,
}
# Per block (fact sheet §4): (params, MACs) of the lite block, each Mobile-Former block and the head; MACs of
# the final Mobile→Former step.
AUTHORS_BLOCKS = {
    "mobileformer_26m": {
        "lite": (360, 903_168),
        "blocks": [
            (121_284, 2_478_080),
            (132_960, 2_662_784),
            (134_904, 1_771_904),
            (159_840, 1_943_744),
            (171_552, 1_776_896),
            (193_088, 2_667_008),
            (235_520, 1_847_360),
            (281_280, 2_228_672),
        ],
        "final_macs": 138_816,
        "head": (1_763_944, 2_422_272),
    },
    "mobileformer_508m": {
        "lite": (1_728, 19_869_696),
        "blocks": [
            (316_784, 53_395_456),
            (315_336, 38_115_840),
            (388_784, 37_426_944),
            (387_816, 29_079_936),
            (557_280, 28_320_448),
            (603_744, 29_390_336),
            (778_272, 50_184_960),
            (1_004_448, 78_122_112),
            (1_140_928, 27_866_400),
            (1_466_016, 37_804_320),
            (1_466_016, 37_804_320),
        ],
        "final_macs": 970_560,
        "head": (5_408_680, 21_987_840),
    },
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_family_is_registered():
    assert NAMES == [f"mobileformer_{size}" for size in SIZES]
    for name in NAMES:
        spec = get_spec(name)
        assert spec.timm_name is None and spec.key_map is mobileformer.key_map
        assert spec.input_size == 224 and not spec.fixed_input_size
        assert spec.reference.published_params_m and spec.reference.published_gmacs


# ------------------------------------------------------------------------------ sizes: the authors' code


@STRUCTURAL_ORACLE
@pytest.mark.parametrize("name", NAMES)
def test_oracle_params_and_macs_equal_the_authors_code(name):
    """Exactly the authors' counts (the registry's 1 % gate is checked by tests/test_sizes.py)."""
    with torch.device("meta"):
        model = get_spec(name).build()
    assert torch_params(reparameterize_structure(model)) == AUTHORS_PARAMS[name]
    assert torch_macs(model, torch.zeros(1, 3, 224, 224)) == AUTHORS_MACS[name]
    tokens = dict(model.named_parameters())["tokens"]
    config = get_spec(name).config
    assert tokens.shape == (config.num_tokens, config.token_dim)  # the learned tokens are one parameter


@STRUCTURAL_ORACLE
@pytest.mark.parametrize("name", list(AUTHORS_BLOCKS))
def test_oracle_every_block_has_the_authors_params_and_macs(name):
    expected = AUTHORS_BLOCKS[name]
    with torch.device("meta"):
        model = get_spec(name).build().eval()
        example = torch.zeros(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    flops = counter.get_flop_counts()

    def size(path: str) -> tuple[int, int]:
        return torch_params(model.get_submodule(path)), sum(flops[f"MobileFormer.{path}"].values()) // 2

    assert size("lite") == expected["lite"]
    assert [size(f"blocks.{i}") for i in range(len(model.blocks))] == expected["blocks"]
    assert size("mobile_to_former")[1] == expected["final_macs"]
    assert size("head") == expected["head"]


# -------------------------------------------------------------------------------- the authors' key names

# Ours -> the authors' (AAboys/MobileFormer), written from their state-dict keys; the inverse of key_map.
_OURS_TO_AUTHORS = (
    ("stem.conv.", "stem.0."),
    ("stem.bn.", "stem.1."),
    ("lite.conv_dw.conv.", "features.0.conv.0."),
    ("lite.conv_dw.bn.", "features.0.conv.1."),
    ("lite.conv_pw.conv.", "features.0.conv.4."),
    ("lite.conv_pw.bn.", "features.0.conv.5."),
    ("head.conv.conv.", "classifier.conv.1."),
    ("head.conv.bn.", "classifier.conv.2."),
    ("head.hidden_norm.", "classifier.fc.1."),
    ("head.hidden.", "classifier.fc.0."),
    ("head.fc.", "classifier.classifier.1."),
)
_BRIDGES_TO_AUTHORS = (
    ("mobile_to_former.alpha.", "local_global.alpha.0."),
    ("mobile_to_former.norm.", "local_global.layer_norm."),
    ("mobile_to_former.", "local_global."),
    ("former.q.", "global_block.q."),
    ("former.proj.", "global_block.channel_mlp."),
    ("former.norm1.", "global_block.layer_norm."),
    ("former.norm2.", "global_block.ffn_norm."),
    ("former.mlp.fc1.", "global_block.ffn.0."),
    ("former.mlp.fc2.", "global_block.ffn.2."),
    ("former_to_mobile.k.", "global_local.k."),
    ("former_to_mobile.v.", "global_local.proj."),
)
# Their DnaBlock (stride 1) and DnaBlock3 (stride 2): our layer -> their conv-BN / hyper-function index.
_MOBILE_TO_AUTHORS = {
    1: {"conv_pw": "conv1", "act_pw": "hyper1", "conv_dw": "conv2", "act_dw": "hyper2", "conv_pwl": "conv3"},
    2: {
        "conv_dw1": "conv1",
        "act_dw1": "hyper1",
        "conv_pw1": "conv2",
        "conv_dw2": "conv3",
        "act_dw2": "hyper3",
        "conv_pw2": "conv4",
    },
}
_CHILD_TO_AUTHORS = {"conv": "0", "bn": "1", "fc1": "hyper.0", "fc2": "hyper.2"}


def _authors_key(key: str, strides: list[int]) -> str:
    if key == "tokens":
        return "tokens.weight"  # their nn.Embedding
    block = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if block is None:
        for ours, theirs in (*_OURS_TO_AUTHORS, *_BRIDGES_TO_AUTHORS[:3]):
            if key.startswith(ours):
                return theirs + key[len(ours) :]
        raise AssertionError(f"no rule for {key}")
    index, rest = int(block.group(1)), block.group(2)
    mobile = re.match(r"^mobile\.(\w+?)\.(conv|bn|fc1|fc2)\.(.+)$", rest)
    if mobile is not None:
        layer, child, tail = mobile.groups()
        rest = f"{_MOBILE_TO_AUTHORS[strides[index]][layer]}.{_CHILD_TO_AUTHORS[child]}.{tail}"
    else:
        rest = next(theirs + rest[len(ours) :] for ours, theirs in _BRIDGES_TO_AUTHORS if rest.startswith(ours))
    return f"features.{index + 1}.{rest}"


def _in_authors_naming(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    strides = [block.stride for block in get_spec(name).config.blocks]
    return {_authors_key(k, strides): v for k, v in state.items()}


@pytest.mark.parametrize("name", NAMES)
def test_authors_state_dict_loads_strictly_through_the_key_map(name, stressed_original, make_inputs):
    spec = get_spec(name)
    original = stressed_original(name)
    theirs = _in_authors_naming(name, original.state_dict())
    assert len(theirs) == len(original.state_dict())
    assert not set(theirs) & set(original.state_dict()), "the authors' names are all different from ours"
    before = list(theirs)
    mapped = spec.key_map(theirs)
    assert list(theirs) == before, "the key map must not mutate its input"
    fresh = spec.build()
    fresh.load_state_dict(mapped, strict=True)
    x = make_inputs(batch=2, seed=3)
    with torch.no_grad():
        assert torch.equal(fresh(x), original(x))
    # our own naming passes through unchanged
    ours = fresh.state_dict()
    assert list(spec.key_map(ours)) == list(ours)


def test_key_map_examples_from_the_authors_checkpoint(stressed_original):
    """Keys as the authors' 26M state dict spells them, and where each lands in ours."""
    theirs = _in_authors_naming("mobileformer_26m", stressed_original("mobileformer_26m").state_dict())
    examples = {
        "tokens.weight": "tokens",
        "stem.1.running_var": "stem.bn.running_var",
        "features.0.conv.4.weight": "lite.conv_pw.conv.weight",
        "features.1.conv3.0.weight": "blocks.0.mobile.conv_pwl.conv.weight",
        "features.1.hyper2.hyper.0.weight": "blocks.0.mobile.act_dw.fc1.weight",
        "features.1.global_block.ffn_norm.bias": "blocks.0.former.norm2.bias",
        "features.1.global_local.proj.weight": "blocks.0.former_to_mobile.v.weight",
        "features.2.conv3.0.weight": "blocks.1.mobile.conv_dw2.conv.weight",
        "features.2.hyper3.hyper.2.bias": "blocks.1.mobile.act_dw2.fc2.bias",
        "features.2.conv4.1.running_var": "blocks.1.mobile.conv_pw2.bn.running_var",
        "features.2.local_global.alpha.0.weight": "blocks.1.mobile_to_former.alpha.weight",
        "local_global.layer_norm.weight": "mobile_to_former.norm.weight",
        "classifier.fc.1.running_mean": "head.hidden_norm.running_mean",
        "classifier.classifier.1.weight": "head.fc.weight",
    }
    mapped = mobileformer.key_map(theirs)
    for their_key, our_key in examples.items():
        assert mapped[our_key] is theirs[their_key], their_key
    # a checkpoint saved from DataParallel: the same keys behind "module."
    wrapped = mobileformer.key_map({f"module.{k}": v for k, v in theirs.items()})
    assert list(wrapped) == list(mapped)


# ---------------------------------------------------------------------- structural oracle: the token paths


def _record(model: nn.Module, x: torch.Tensor, kind: type) -> dict[str, tuple[tuple, torch.Tensor]]:
    """``{module path: (args, output)}`` of every ``kind`` module in one forward of ``model`` on ``x``."""
    records: dict[str, tuple[tuple, torch.Tensor]] = {}
    handles = [
        module.register_forward_hook(lambda _, args, out, path=path: records.__setitem__(path, (args, out)))
        for path, module in model.named_modules()
        if isinstance(module, kind)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _moved_tokens(model: nn.Module, seed: int = 11) -> nn.Module:
    moved = copy.deepcopy(model)
    with torch.no_grad():
        noise = torch.randn(moved.tokens.shape, generator=torch.Generator().manual_seed(seed))
        moved.tokens.add_(0.5 * noise)
    return moved


TOKEN_READERS = {"dynamic_relu": DynamicReLU, "former_to_mobile": FormerToMobile, "mobile_to_former": MobileToFormer}


@STRUCTURAL_ORACLE
@pytest.mark.parametrize("reader", TOKEN_READERS)
@pytest.mark.parametrize("name", NAMES)
def test_oracle_changing_the_tokens_moves_every_token_reader(name, reader, stressed_original, make_inputs):
    """Each path separately: every dynamic ReLU, Former→Mobile and Mobile→Former, given the *same* feature map,
    answers differently when only the tokens it reads differ (those of a model whose token parameter moved)."""
    original = stressed_original(name)
    x = make_inputs(batch=2, seed=4)
    base, moved = (
        _record(original, x, TOKEN_READERS[reader]),
        _record(_moved_tokens(original), x, TOKEN_READERS[reader]),
    )
    expected = 2 * len(original.blocks) if reader == "dynamic_relu" else len(original.blocks)
    assert len(base) == expected + (reader == "mobile_to_former")  # the final Mobile→Former step
    for path, ((features, tokens), out) in base.items():
        module = original.get_submodule(path)
        other_tokens = moved[path][0][1]
        with torch.no_grad():
            assert torch.equal(module(features, tokens), out)
            changed = module(features, other_tokens)
        if reader == "former_to_mobile":  # what the bridge adds to the map, not the map itself
            changed, out = changed - features, out - features
        assert rel(changed, out) > 1e-3, f"{path} ignores the tokens"  # measured 2e-2 … 0.6
    with torch.no_grad():
        assert rel(_moved_tokens(original)(x), original(x)) > 1e-2


@STRUCTURAL_ORACLE
@pytest.mark.parametrize("name", NAMES)
def test_oracle_dynamic_relu_slopes_follow_the_tokens(name, stressed_original, make_inputs):
    """The slopes themselves move with the tokens, and they are not a plain ReLU's ``(1, 0)``."""
    original = stressed_original(name)
    x = make_inputs(batch=2, seed=4)
    base, moved = _record(original, x, DynamicReLU), _record(_moved_tokens(original), x, DynamicReLU)
    for path, ((_, token), _) in base.items():
        module = original.get_submodule(path)
        with torch.no_grad():
            a1, a2 = module.slopes(token)
            b1, b2 = module.slopes(moved[path][0][1])
        assert a1.shape == a2.shape == (2, module.channels, 1, 1)
        assert rel(b1, a1) > 1e-3 and rel(b2, a2) > 1e-3, path
        assert (a1 - 1).abs().max() > 1e-2 and a2.abs().max() > 1e-2, f"{path} is a plain ReLU"
        assert not torch.equal(a1[0], a1[1]), f"{path}: the slopes are not per sample"


@STRUCTURAL_ORACLE
@pytest.mark.parametrize("name", NAMES)
def test_oracle_one_pixel_changes_the_tokens(name, stressed_original, make_inputs):
    """A corner pixel of image 0 reaches every block's tokens (the bridges attend over all positions), and
    image 1's tokens do not move."""
    original = stressed_original(name)
    x = make_inputs(batch=2, seed=4)
    poked = x.clone()
    poked[0, :, 0, 0] += 1.0
    base, changed = _record(original, x, MobileToFormer), _record(original, poked, MobileToFormer)
    assert len(base) == len(original.blocks) + 1
    for path, (_, tokens) in base.items():
        moved = changed[path][1]
        # measured 5e-5 … 1e-4 (the tokens are layer-normed); float32 noise is ~1e-7
        assert rel(moved[0], tokens[0]) > 1e-5, f"{path}: the pixel does not reach the tokens"
        assert rel(moved[1], tokens[1]) < 1e-7, f"{path}: image 0 leaks into image 1"


# ------------------------------------------------------------------------- blocks against their formulas


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q·kᵀ / √(C/heads))·v`` per head, heads owning contiguous column chunks; 2-D (rows, C)."""
    scale = (q.shape[-1] // heads) ** -0.5
    chunks = zip(q.chunk(heads, -1), k.chunk(heads, -1), v.chunk(heads, -1), strict=True)
    return torch.cat([torch.softmax(qh @ kh.T * scale, -1) @ vh for qh, kh, vh in chunks], -1)


@torch.no_grad()
def test_bridges_and_former_match_a_per_head_loop():
    """The fact sheet's formulas, one head (contiguous channel chunk) and one sample at a time."""
    torch.manual_seed(0)
    b, t, d, c, h, w = 2, 3, 16, 12, 5, 4
    x, tokens = torch.randn(b, c, h, w), torch.randn(b, t, d)
    m2f, former, f2m = MobileToFormer(c, d).eval(), Former(d).eval(), FormerToMobile(c, d).eval()
    assert former.mlp.fc1.out_features == 2 * d

    for i in range(b):
        feats, z = x[i].reshape(c, h * w).T, tokens[i]  # (HW, C), (T, d)
        # Mobile→Former: q from tokens, keys = values = raw features, softmax over positions, α gate, post-LN
        alpha = 2 * torch.clamp(m2f.alpha(z) / 6 + 0.5, 0, 1)
        expected = m2f.norm(z + m2f.proj(_attend(m2f.q(z), feats, feats, 2) * alpha))
        assert rel(m2f(x, tokens)[i], expected) < 1e-6
        # Former: 4 heads, keys = values = raw tokens, post-LN; FFN d → 2d → d, post-LN
        mid = former.norm1(z + former.proj(_attend(former.q(z), z, z, 4)))
        assert rel(former(tokens)[i], former.norm2(mid + former.mlp(mid))) < 1e-6
        # Former→Mobile: queries = raw features, k and v from tokens, softmax over tokens, added to the map
        added = _attend(feats, f2m.k(z), f2m.v(z), 2)  # (HW, C)
        assert rel(f2m(x, tokens)[i], x[i] + added.T.reshape(c, h, w)) < 1e-6


@torch.no_grad()
def test_dynamic_relu_is_max_of_two_token_driven_slopes():
    torch.manual_seed(0)
    act = DynamicReLU(token_dim=8, channels=3).eval()
    x, token = torch.randn(2, 3, 4, 4), torch.randn(2, 8)
    h = torch.clamp(act.fc2(torch.relu(act.fc1(token))) / 6 + 0.5, 0, 1)  # relu6(z + 3) / 6
    a1, a2 = (2 * h[:, :3]).reshape(2, 3, 1, 1), (2 * h[:, 3:] - 1).reshape(2, 3, 1, 1)
    assert torch.allclose(act(x, token), torch.maximum(a1 * x, a2 * x), atol=1e-6)
    # with h = 1/2 everywhere it is a plain ReLU
    nn.init.zeros_(act.fc2.weight)
    nn.init.zeros_(act.fc2.bias)
    assert torch.equal(act(x, token), torch.relu(x))


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(12.0).reshape(1, 12, 1, 1).expand(2, 12, 3, 2)
    out = ChannelShuffle(4)(x)
    order = [g * 3 + j for j in range(3) for g in range(4)]  # channel j of group g lands at j·4 + g
    assert out[:, :, 1, 1].tolist() == [order, order]


# ---------------------------------------------------------------------------------------- deployability


@pytest.mark.parametrize("name", NAMES)
def test_every_batchnorm_folds_in_the_fuse_stage(name, stressed_original, make_inputs, bn_count):
    """Each BatchNorm (the head's BN1d included) follows a conv/linear only it reads: the generic pass folds all."""
    original = stressed_original(name)
    fused, report = fuse_batchnorm(original, make_inputs(batch=2))
    assert report.skipped == {}
    assert len(report.folded) == bn_count(original) and bn_count(fused) == 0
    assert ("head.hidden", "head.hidden_norm") in report.folded


@pytest.mark.slow
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", NAMES)
def test_coreml_conversion(name, precision, stressed_original, make_inputs, input_side, tmp_path):
    from deployforge.targets.coreml import describe_package, export_coreml

    example = make_inputs(batch=1, size=input_side(name))
    fused, _ = fuse_batchnorm(stressed_original(name), example)
    merged, _ = reparameterize(fused)
    path = tmp_path / "m.mlpackage"
    details = export_coreml(merged, example, path, precision)
    assert details.precision is precision
    package = describe_package(path)
    assert package.model_type == "mlProgram"
    assert package.inputs == {"image": tuple(example.shape)} and list(package.outputs) == ["logits"]
