"""The Core ML reference interpreter (deployforge.mlprogram) against torch, op by op, and its failure modes.

Every case converts a tiny torch module with coremltools (``torch.export`` -> mlprogram, iOS16), runs the saved
package with the interpreter and compares with torch in float64. Each case also names the MIL ops it must
produce, so a conversion that lowers differently fails loudly instead of testing something else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deployforge.mlprogram import (
    SUPPORTED_OPS,
    MLProgramError,
    UnsupportedOpError,
    WeightFile,
    WeightFileError,
    load_program,
)

# coremltools' torch frontend warns of its own deprecated registry on every conversion
pytestmark = pytest.mark.filterwarnings("ignore:Function _TORCH_OPS_REGISTRY:DeprecationWarning")

FP32_BOUND = 1e-5  # interpreter (float32) vs torch (float64) on one op
FP16_BOUND = 1e-2
WEIGHTS = Path("Data/com.apple.CoreML/weights/weight.bin")
SPEC = Path("Data/com.apple.CoreML/model.mlmodel")


def convert(module: nn.Module, example: torch.Tensor, path: Path, fp16: bool = False) -> Path:
    """Save ``module`` as an ML program package at ``path`` (FP32 unless ``fp16``)."""
    import coremltools as ct

    program = torch.export.export(module.eval(), (example,)).run_decompositions({})
    mlmodel = ct.convert(
        program,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
    )
    mlmodel.save(str(path))
    return path


def reference(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module.double()(x.double()).numpy()


def feed(program, x: torch.Tensor) -> dict[str, np.ndarray]:
    (name,) = program.input_names
    return {name: x.numpy()}


def interpret(path: Path, x: torch.Tensor) -> np.ndarray:
    program = load_program(path)
    (output,) = program.output_names
    return program.run(feed(program, x))[output]


class Lambda(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


class Attention(nn.Module):
    """Batch-1 reshapes, a transposed matmul, softmax: what the attention blocks export to."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * 0.5).softmax(dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    generator = torch.Generator().manual_seed(3)
    bn.running_mean.normal_(0, 0.5, generator=generator)
    bn.running_var.uniform_(0.5, 2.0, generator=generator)
    bn.weight.data.uniform_(0.5, 1.5, generator=generator)
    bn.bias.data.normal_(0, 0.5, generator=generator)
    return bn


# (case id, module factory, input shape, MIL ops the conversion must produce)
CASES = [
    ("conv_stride2_pad1", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (1, 4, 9, 9), {"conv"}),
    ("conv_groups2_dilation2", lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (1, 4, 9, 9), {"conv"}),
    ("conv_depthwise_x2_stride2", lambda: nn.Conv2d(4, 8, 3, stride=2, groups=4), (1, 4, 9, 8), {"conv"}),
    ("conv_depthwise_7x7", lambda: nn.Conv2d(4, 4, 7, padding=3, groups=4), (1, 4, 10, 10), {"conv"}),
    ("conv_same_even_kernel", lambda: nn.Conv2d(3, 5, 4, padding="same"), (1, 3, 7, 8), {"conv"}),
    ("conv_rect_kernel_stride", lambda: nn.Conv2d(3, 5, (1, 3), stride=(2, 1), padding=(0, 1)), (1, 3, 7, 8), {"conv"}),
    (
        "conv_asymmetric_pad",
        lambda: nn.Sequential(nn.ZeroPad2d((0, 1, 2, 0)), nn.Conv2d(3, 4, 3, stride=2)),
        (1, 3, 8, 8),
        {"conv"},
    ),
    ("conv1d", lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (1, 3, 11), {"conv"}),
    ("conv_1x1_no_bias", lambda: nn.Conv2d(6, 3, 1, bias=False), (1, 6, 5, 5), {"conv"}),
    ("linear_3d", lambda: nn.Linear(8, 5), (1, 7, 8), {"linear"}),
    ("attention_matmul_transpose", Attention, (1, 16, 4, 4), {"matmul", "softmax", "reshape", "transpose"}),
    ("matmul_broadcast", lambda: Lambda(lambda x: x @ x[0].transpose(-1, -2)[None, :1]), (2, 3, 4, 4), {"matmul"}),
    ("batch_norm", lambda: _bn(5), (1, 5, 4, 4), {"batch_norm"}),
    ("layer_norm_last", lambda: nn.LayerNorm(6), (1, 3, 6), {"layer_norm"}),
    ("layer_norm_last_two", lambda: nn.LayerNorm((4, 6)), (1, 3, 4, 6), {"layer_norm"}),
    ("group_norm", lambda: nn.GroupNorm(2, 4), (1, 4, 3, 5), None),
    ("instance_norm", lambda: nn.InstanceNorm2d(3, affine=True), (1, 3, 5, 6), {"instance_norm"}),
    ("relu_gelu_sigmoid", lambda: Lambda(lambda x: F.gelu(torch.relu(x) - 0.5) + torch.sigmoid(x)), (1, 8), None),
    ("silu_hardsigmoid", lambda: Lambda(lambda x: F.silu(x) * F.hardsigmoid(x)), (1, 3, 8), {"sigmoid_hard"}),
    ("hardswish", lambda: nn.Hardswish(), (1, 3, 8), None),
    ("clamp_relu6", lambda: Lambda(lambda x: x.clamp(-0.3, 0.7) + F.relu6(4 * x)), (1, 3, 8), {"clip"}),
    ("leaky_elu_tanh", lambda: Lambda(lambda x: F.leaky_relu(x, 0.1) + F.elu(x) + torch.tanh(x)), (1, 9), None),
    ("softmax_axis1", lambda: nn.Softmax(dim=1), (1, 4, 3, 2), {"softmax"}),
    ("max_pool", lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 9, 8), {"max_pool"}),
    ("max_pool_ceil", lambda: nn.MaxPool2d(2, stride=2, ceil_mode=True), (1, 2, 7, 7), {"max_pool"}),
    (
        "avg_pool_exclude_pad",
        lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        (1, 2, 6, 7),
        {"avg_pool"},
    ),
    ("avg_pool_include_pad", lambda: nn.AvgPool2d(3, stride=2, padding=1), (1, 2, 7, 7), {"avg_pool"}),
    ("avg_pool_ceil", lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 2, 8, 8), {"avg_pool"}),
    ("global_mean", lambda: Lambda(lambda x: x.mean((-2, -1), keepdim=True) + x.mean(1)[:, None]), (1, 3, 4, 5), None),
    ("reductions", lambda: Lambda(lambda x: x.sum(-1) + x.amax(1) - x.amin(-1)), (1, 4, 4), {"reduce_sum"}),
    (
        "reshape_permute_flatten",
        lambda: Lambda(lambda x: x.reshape(1, 2, 3, 4).permute(0, 3, 1, 2).flatten(1)),
        (1, 6, 4),
        {"reshape", "transpose"},
    ),
    ("concat_neg_axis", lambda: Lambda(lambda x: torch.cat([x, 2 * x, x[..., :1]], dim=-1)), (1, 2, 3), {"concat"}),
    ("split_chunk", lambda: Lambda(lambda x: torch.cat(x.split([1, 3], dim=1)[::-1], dim=1)), (1, 4, 3), {"split"}),
    ("slice_strided", lambda: Lambda(lambda x: x[:, 1:, ::2, -3:]), (1, 3, 6, 5), {"slice_by_index"}),
    ("squeeze_unsqueeze", lambda: Lambda(lambda x: x.squeeze(1).unsqueeze(-1) * 2), (1, 1, 4), None),
    (
        "broadcast_binary",
        lambda: Lambda(lambda x: (x - x.mean(1, keepdim=True)) / (x[:, :1] ** 2 + 1) * torch.maximum(x, -x[0, 0])),
        (1, 3, 4),
        {"real_div", "maximum", "sub"},
    ),
    (
        "unary_math",
        lambda: Lambda(
            lambda x: torch.sqrt(x.abs() + 1) + torch.rsqrt(x * x + 1) + torch.exp(-x) + torch.log(x * x + 2)
        ),
        (1, 3, 4),
        {"sqrt", "exp", "log"},
    ),
    ("minimum_pow", lambda: Lambda(lambda x: torch.minimum(x, x.flip(-1)).abs().pow(1.5)), (1, 2, 5), {"pow"}),
    (
        "upsample_bilinear",
        lambda: Lambda(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
        (1, 2, 3, 4),
        None,
    ),
    (
        "upsample_bilinear_corners",
        lambda: Lambda(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)),
        (1, 2, 3, 4),
        None,
    ),
    ("pixel_shuffle", lambda: nn.PixelShuffle(2), (1, 8, 3, 2), None),
    ("pixel_unshuffle", lambda: nn.PixelUnshuffle(2), (1, 2, 4, 6), None),
    (
        "pad_reflect_replicate",
        lambda: Lambda(lambda x: F.pad(x, (1, 2, 2, 1), "reflect") + F.pad(x, (1, 2, 2, 1), "replicate")),
        (1, 2, 4, 5),
        None,
    ),
    (
        "tile_stack",
        lambda: Lambda(lambda x: torch.stack([x.repeat(1, 2, 1), -x.repeat(1, 2, 1)], dim=-2)),
        (1, 2, 3),
        None,
    ),
    (
        "gather_where",
        lambda: Lambda(lambda x: torch.where(x > 0.1, x, 2 * x).index_select(-1, torch.tensor([2, 0, 0]))),
        (1, 2, 3),
        None,
    ),
    (
        "logsumexp_argmax",
        lambda: Lambda(lambda x: x.logsumexp(1).sum(-1, keepdim=True) + x.argmax(-1)),
        (1, 3, 4),
        None,
    ),
    (
        "normalize_softplus_prelu",
        lambda: nn.Sequential(nn.PReLU(3), nn.Softplus(), Lambda(lambda x: F.normalize(x, dim=1))),
        (1, 3, 4, 4),
        None,
    ),
    ("upsample_nearest", lambda: nn.Upsample(scale_factor=2, mode="nearest"), (1, 2, 3, 4), None),
]


@pytest.mark.parametrize(("factory", "shape", "expected_ops"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_op_matches_torch(rel_l2, tmp_path, factory, shape, expected_ops):
    torch.manual_seed(0)
    module = factory().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    path = convert(module, x, tmp_path / "m.mlpackage")
    program = load_program(path)
    if expected_ops is not None:
        assert expected_ops <= program.op_types, program.op_types
    assert program.op_types <= SUPPORTED_OPS
    assert rel_l2(interpret(path, x), reference(module, x)) <= FP32_BOUND


def _edit_spec(package: Path, edit) -> None:
    """Apply ``edit`` to the main block of ``package``'s spec (with coremltools' proto classes) and save it."""
    from coremltools.proto import Model_pb2

    spec_path = package / SPEC
    model = Model_pb2.Model()
    model.ParseFromString(spec_path.read_bytes())
    function = model.mlProgram.functions["main"]
    edit(function.block_specializations[function.opset])
    spec_path.write_bytes(model.SerializeToString())


def _set_string_parameter(block, op_type: str, parameter: str, text: str) -> None:
    """Point ``parameter`` of the (only) ``op_type`` op at a string constant holding ``text``."""
    (op,) = [op for op in block.operations if op.type == op_type]
    (binding,) = op.inputs[parameter].arguments
    (const,) = [c for c in block.operations if c.type == "const" and c.outputs[0].name == binding.name]
    const.attributes["val"].immediateValue.tensor.strings.values[:] = [text]


# coremltools converts GELU(approximate="tanh") to mode EXACT, so the other modes are reached by editing the spec
@pytest.mark.parametrize(
    ("mode", "function"),
    [
        ("TANH_APPROXIMATION", lambda x: F.gelu(x, approximate="tanh")),
        ("SIGMOID_APPROXIMATION", lambda x: x * torch.sigmoid(1.702 * x)),
    ],
)
def test_gelu_modes(rel_l2, tmp_path, mode, function):
    x = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(1))
    path = convert(nn.GELU(), x, tmp_path / "m.mlpackage")
    _edit_spec(path, lambda block: _set_string_parameter(block, "gelu", "mode", mode))
    expected = function(x.double()).numpy()
    assert rel_l2(interpret(path, x), expected) <= FP32_BOUND
    assert rel_l2(interpret(path, x), F.gelu(x.double()).numpy()) > 1e-4  # the mode made a difference


# same: ceil(in / stride) outputs, an odd total padding's extra row after; same_lower: before
@pytest.mark.parametrize(("pad_type", "padding"), [("same", (1, 1, 1, 2)), ("same_lower", (1, 1, 2, 1))])
def test_conv_same_padding_modes(rel_l2, tmp_path, pad_type, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 4, stride=2).eval()
    x = torch.randn(1, 3, 9, 8, generator=torch.Generator().manual_seed(1))
    path = convert(conv, x, tmp_path / "m.mlpackage")

    def make_same(block) -> None:
        _set_string_parameter(block, "conv", "pad_type", pad_type)
        (op,) = [op for op in block.operations if op.type == "conv"]
        dims = op.outputs[0].type.tensorType.dimensions
        dims[2].constant.size, dims[3].constant.size = 5, 4  # ceil(9 / 2), ceil(8 / 2)

    _edit_spec(path, make_same)
    with torch.no_grad():
        expected = conv.double()(F.pad(x.double(), padding)).numpy()  # F.pad: (left, right, top, bottom)
    assert expected.shape == (1, 4, 5, 4)
    assert rel_l2(interpret(path, x), expected) <= FP32_BOUND


def test_fp16_program_shows_fp16_rounding(rel_l2, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 3, groups=4), nn.Flatten())
    module.eval()
    x = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    fp32 = load_program(convert(module, x, tmp_path / "fp32.mlpackage"))
    fp16 = load_program(convert(module, x, tmp_path / "fp16.mlpackage", fp16=True))
    assert fp16.is_fp16 and not fp32.is_fp16
    truth = reference(module, x)
    error32 = rel_l2(fp32.run(feed(fp32, x))[fp32.output_names[0]], truth)
    error16 = rel_l2(fp16.run(feed(fp16, x))[fp16.output_names[0]], truth)
    assert error32 < 1e-6
    assert 1e-4 < error16 <= FP16_BOUND  # float16's 11-bit mantissa: errors of order 1e-4 to 1e-3
    assert error16 > 50 * error32


def test_fp16_intermediates_are_float16_values(tmp_path):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    x = torch.randn(1, 3, 6, 6)
    program = load_program(convert(module, x, tmp_path / "m.mlpackage", fp16=True))
    values = program.run(feed(program, x), keep=True)
    conv_outputs = [op.outputs[0] for op in program.operations if op.type == "conv"]
    assert conv_outputs and all(values[name].dtype == np.float16 for name in conv_outputs)
    assert values["input"].dtype == np.float32 and program.value_type("input").dtype == "FLOAT32"


def test_selecting_ops_need_no_fp16_rounding(tmp_path, monkeypatch):
    """Skipping the rounding after reshape/transpose/relu/max_pool... changes nothing: their fp16 inputs are exact."""
    from deployforge.mlprogram import interpret as executor

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), Attention())
    x = torch.randn(1, 16, 8, 8)
    program = load_program(convert(module, x, tmp_path / "m.mlpackage", fp16=True))
    assert {"relu", "max_pool", "reshape", "transpose"} <= program.op_types & executor.SELECTING_OPS
    skipped = program.run(feed(program, x), keep=True)
    monkeypatch.setattr(executor, "SELECTING_OPS", frozenset())
    rounded = program.run(feed(program, x), keep=True)
    assert skipped.keys() == rounded.keys()
    for name in skipped:
        np.testing.assert_array_equal(skipped[name], rounded[name], err_msg=name)


def test_batch_of_samples_runs_in_one_pass_like_single_samples(rel_l2, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), Attention(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(1, 16, 4, 4)
    program = load_program(convert(module, x, tmp_path / "m.mlpackage"))
    batch = torch.randn(5, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    output = program.output_names[0]
    together = program.run(feed(program, batch))[output]
    one_by_one = np.concatenate([program.run(feed(program, image[None]))[output] for image in batch])
    assert together.shape == (5, 16)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)
    assert rel_l2(together, reference(module, batch)) <= FP32_BOUND
    chunked = program.run(feed(program, batch), chunk=2)[output]
    np.testing.assert_allclose(chunked, together, rtol=1e-6, atol=1e-7)


def test_keep_returns_every_intermediate_by_mil_name(tmp_path):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    x = torch.randn(1, 3, 4, 4)
    program = load_program(convert(module, x, tmp_path / "m.mlpackage"))
    values = program.run(feed(program, x), keep=True)
    produced = {name for op in program.operations for name in op.outputs}
    assert produced <= set(values)
    (relu,) = [op.outputs[0] for op in program.operations if op.type == "relu"]
    with torch.no_grad():
        np.testing.assert_allclose(values[relu], module[1](module[0](x)).numpy(), rtol=1e-5, atol=1e-6)


def test_wrong_input_shape_is_named(tmp_path):
    program = load_program(convert(nn.ReLU(), torch.randn(1, 3), tmp_path / "m.mlpackage"))
    with pytest.raises(MLProgramError, match=r"input 'input' has shape \(2, 4\); the program takes \(1, 3\)"):
        program.run({"input": np.zeros((2, 4), np.float32)})
    with pytest.raises(MLProgramError, match=r"missing inputs \['input'\]"):
        program.run({"image": np.zeros((1, 3), np.float32)})


# --- the weight file ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    return convert(module, x, tmp_path_factory.mktemp("blob") / "m.mlpackage"), module, x


@pytest.fixture
def copy(package, tmp_path) -> Path:
    destination = tmp_path / "copy.mlpackage"
    shutil.copytree(package[0], destination)
    return destination


def test_weight_file_is_parsed_blob_by_blob(package):
    path, module, _ = package
    weights = WeightFile(path / WEIGHTS)
    assert len(weights.blobs) == 2  # the two conv weights; coremltools writes values under 10 elements inline
    assert all(blob.dtype == np.float32 and blob.data_offset % 64 == 0 for blob in weights.blobs.values())
    conv = module[0].weight.detach().numpy()
    matches = [
        offset
        for offset, blob in weights.blobs.items()
        if blob.size == conv.nbytes and np.array_equal(weights.read(offset, np.float32, conv.shape), conv)
    ]
    assert len(matches) == 1


def test_interpreted_package_matches_torch(rel_l2, package):
    path, module, x = package
    assert rel_l2(interpret(path, x), reference(module, x)) <= FP32_BOUND


def test_truncated_weight_file_is_caught(copy):
    blob = copy / WEIGHTS
    blob.write_bytes(blob.read_bytes()[:-100])
    with pytest.raises(WeightFileError, match="outside the file|truncated"):
        load_program(copy)


def test_bad_sentinel_is_caught(copy):
    blob = copy / WEIGHTS
    data = bytearray(blob.read_bytes())
    data[64:68] = b"\x00\x00\x00\x00"  # the first blob's metadata record starts after the 64-byte header
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match="sentinel"):
        load_program(copy)


def test_data_offset_outside_the_file_is_caught(copy):
    blob = copy / WEIGHTS
    data = bytearray(blob.read_bytes())
    data[64 + 16 : 64 + 24] = (len(data) + 64).to_bytes(8, "little")  # the first blob's data offset
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match="outside the file"):
        load_program(copy)


def test_reference_to_no_blob_is_caught(copy):
    def shift_first_blob_reference(block) -> None:
        for op in block.operations:
            value = op.attributes["val"] if op.type == "const" else None
            if value is not None and value.WhichOneof("value") == "blobFileValue":
                value.blobFileValue.offset += 64
                return

    _edit_spec(copy, shift_first_blob_reference)
    with pytest.raises(WeightFileError, match="where none starts|program expects"):
        load_program(copy)


def test_unknown_op_is_named_with_its_position(copy):
    renamed = {}

    def rename_second_conv(block) -> None:
        convs = [(i, op) for i, op in enumerate(block.operations) if op.type == "conv"]
        position, op = convs[1]
        op.type = "conv_fancy"
        renamed.update(position=position, output=op.outputs[0].name)

    _edit_spec(copy, rename_second_conv)
    with pytest.raises(UnsupportedOpError) as caught:
        load_program(copy)
    error = caught.value
    assert (error.op_type, error.position, error.output) == ("conv_fancy", renamed["position"], renamed["output"])
    assert f"'conv_fancy' at op #{renamed['position']} ('{renamed['output']}')" in str(error)


def test_missing_spec_is_named(tmp_path):
    (tmp_path / "empty.mlpackage").mkdir()
    with pytest.raises(MLProgramError, match="no model spec"):
        load_program(tmp_path / "empty.mlpackage")


def test_the_interpreter_imports_numpy_and_coremltools_protos_only():
    import ast
    import sys

    package = Path(__file__).resolve().parents[1] / "deployforge" / "mlprogram"
    imported = set()
    for module in package.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module)
    third_party = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == {
        "numpy",
        "numpy.lib.stride_tricks",
        "coremltools.proto",  # the generated protobuf classes (Model_pb2, MIL_pb2)
        "google.protobuf.message",
        "deployforge.errors",
    }
