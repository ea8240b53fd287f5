"""The ExecuTorch target: XNNPACK-delegated ``.pte`` programs, run by ExecuTorch's runtime, read back from disk."""

from __future__ import annotations

import gc
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deployforge.errors import InvalidSetting
from deployforge.registry import list_models
from deployforge.targets.executorch import TARGET, _two_pass_group_norm
from deployforge.targets.protocol import ExportRefused, MissingExtra, TargetOptions, run_in_batches
from deployforge.targets.rewrites import SPLIT_DW7X7, split_depthwise_7x7

BIG_PARAMS_M = 20.0  # as in conftest: the long cases are slow-marked
MODELS = [
    pytest.param(s.name, marks=pytest.mark.slow) if s.reference.params_m > BIG_PARAMS_M else s.name
    for s in list_models()
]
PARITY = 1e-5
TAMPER_FLOOR = 1e-3

needs_executorch = pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None, reason="the executorch extra is not installed"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, deployed_pair, make_inputs):
    """``exported(name, rewrites=())``: ``(path, facts)`` of the model's program, exported once per module."""
    cache: dict[tuple[str, tuple[str, ...]], tuple[Path, dict[str, str]]] = {}

    def export(name: str, rewrites: tuple[str, ...] = ()) -> tuple[Path, dict[str, str]]:
        key = (name, rewrites)
        if key not in cache:
            _, merged, side = deployed_pair(name)
            directory = tmp_path_factory.mktemp(f"{name}-{'-'.join(rewrites) or 'plain'}")
            options = TargetOptions(allow_partial=True, rewrites=rewrites)
            facts = TARGET.export(merged, make_inputs(1, side), directory, name, options)
            assert sorted(p.name for p in directory.iterdir()) == list(TARGET.files(name))
            cache[key] = (directory / TARGET.files(name)[0], facts)
        return cache[key]

    return export


def _parity(name, path, deployed_pair, make_inputs, rel_l2, threads: int = 1) -> float:
    original, _, side = deployed_pair(name)
    inputs = make_inputs(2, side, seed=1)
    with torch.no_grad():
        reference = original(inputs)
    return rel_l2(run_in_batches(TARGET.load(path, threads), inputs.numpy(), 1), reference)


@needs_executorch
@pytest.mark.parametrize("name", MODELS)
def test_program_runs_within_parity_and_reads_back(name, exported, deployed_pair, make_inputs, rel_l2, record_property):
    """One test per model: lowering is most of the cost (Mobile-Former's 84 XNNPACK partitions take a minute), and
    tests of one model spread over two xdist workers would each lower it."""
    path, facts = exported(name)
    error = _parity(name, path, deployed_pair, make_inputs, rel_l2)
    record_property("rel_l2", f"{error:.2e}")  # the per-model table of the junit report
    record_property("outside_xnnpack", facts["outside"])
    assert error <= PARITY

    _, merged, side = deployed_pair(name)
    with torch.no_grad():
        classes = merged(torch.zeros(1, 3, side, side)).shape[-1]
    description = TARGET.describe(path)
    assert list(description.inputs.values()) == [(1, 3, side, side)]
    assert list(description.outputs.values()) == [(1, classes)]
    assert description.ops["XnnpackBackend"] >= 1
    assert description.ops.get("xnnpack XNNConv2d", 0) + description.ops.get("xnnpack XNNDepthwiseConv2d", 0) > 0
    assert description.size_bytes == path.stat().st_size
    if facts["outside"] == "none":  # fully delegated: one XNNPACK call and no portable kernel
        assert description.facts["calls"] == "1 XNNPACK, 0 portable"


def _tamper(source: Path, target: Path) -> None:
    """Copy ``source`` with the largest constant (a weight XNNPACK reads) sign-flipped at every other float."""
    from executorch.exir._serialize._program import _flatbuffer_to_program, _get_extended_header

    data = bytearray(source.read_bytes())
    header = _get_extended_header(bytes(data))
    program = _flatbuffer_to_program(bytes(data[: header.program_size]))
    index = max((entry.segment_index for entry in program.named_data), key=lambda i: program.segments[i].size)
    segment = program.segments[index]
    start = header.segment_base_offset + segment.offset
    weight = np.frombuffer(bytes(data[start : start + segment.size - segment.size % 4]), dtype=np.float32).copy()
    weight[::2] *= -1
    data[start : start + weight.nbytes] = weight.tobytes()
    target.write_bytes(bytes(data))


@needs_executorch
@pytest.mark.parametrize("name", ["fastvit_t8", "mobileone_s0"])
def test_tampered_weights_break_parity(name, exported, deployed_pair, make_inputs, rel_l2, tmp_path):
    path, _ = exported(name)
    tampered = tmp_path / path.name
    _tamper(path, tampered)
    assert tampered.read_bytes() != path.read_bytes()
    assert _parity(name, tampered, deployed_pair, make_inputs, rel_l2) > TAMPER_FLOOR


def test_missing_runtime_names_the_extra(monkeypatch):
    for module in ("executorch", "executorch.exir", "executorch.runtime"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra, match=r"pip install 'deployforge\[executorch\]'"):
        TARGET.require()


class _LayerNormHead(nn.Module):
    """A conv and a channel LayerNorm: XNNPACK takes the conv and the mean, not the LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


@needs_executorch
def test_partly_delegated_program_is_refused_unless_allowed(tmp_path):
    model = _LayerNormHead().eval()
    example = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ExportRefused, match=r"outside XNNPACK .*native_layer_norm.*--allow-partial") as refused:
        TARGET.export(model, example, tmp_path, "tiny", TargetOptions())
    assert "\n" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []
    facts = TARGET.export(model, example, tmp_path, "tiny", TargetOptions(allow_partial=True))
    assert "native_layer_norm" in facts["outside"]
    with torch.no_grad():
        reference = model(example).numpy()
    outputs = TARGET.load(tmp_path / "tiny.pte")(example.numpy())
    assert np.allclose(outputs, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_split_dw7x7_is_the_same_convolution(stride, rel_l2):
    generator = torch.Generator().manual_seed(stride)
    conv = nn.Conv2d(16, 16, 7, stride=stride, padding=3, groups=16)
    nn.init.normal_(conv.weight, generator=generator)
    nn.init.normal_(conv.bias, generator=generator)
    rewritten, count = split_depthwise_7x7(nn.Sequential(conv, nn.ReLU()))
    inputs = torch.randn(2, 16, 23, 23, generator=generator)
    assert count == 1
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7) for m in rewritten.modules())
    with torch.no_grad():
        assert rel_l2(rewritten(inputs), nn.Sequential(conv, nn.ReLU())(inputs)) <= 1e-6


@needs_executorch
def test_split_dw7x7_keeps_parity_and_leaves_igemm(exported, deployed_pair, make_inputs, rel_l2):
    _, merged, _ = deployed_pair("fastvit_t8")
    # the ConvFFNs' 7x7 depthwise convolutions; the patch embeddings' (channel multiplier 2) are left alone
    assert split_depthwise_7x7(merged)[1] == 10
    path, facts = exported("fastvit_t8", (SPLIT_DW7X7,))
    assert facts[SPLIT_DW7X7] == "10 depthwise 7x7 convolutions split"
    assert _parity("fastvit_t8", path, deployed_pair, make_inputs, rel_l2) <= PARITY
    convolutions = TARGET.describe(path).facts["convolutions"]
    assert re.search(r"depthwise conv 7x7(,|$)", convolutions) is None
    assert "3× depthwise conv 7x7 stride 2 multiplier 2" in convolutions


@needs_executorch
def test_profile_names_the_xnnpack_path_of_each_convolution(exported, deployed_pair, make_inputs):
    _, _, side = deployed_pair("fastvit_t8")
    inputs = make_inputs(3, side).numpy()
    plain = TARGET.profile(exported("fastvit_t8")[0], inputs)
    split = TARGET.profile(exported("fastvit_t8", (SPLIT_DW7X7,))[0], inputs)
    assert all(seconds >= 0 for seconds in (*plain.values(), *split.values()))
    assert sum(plain.values()) > 0
    # XNNPACK's depthwise kernels take at most 25 taps: 7x7 runs as IGEMM, 3x3 and the split parts as DWConv
    assert "depthwise conv 7x7 [IGEMM]" in plain
    assert "depthwise conv 3x3 [DWConv]" in plain
    assert "depthwise conv 7x7 [IGEMM]" not in split
    assert any(kind.startswith("depthwise conv 7x3 dilated [DWConv]") for kind in split)


@needs_executorch
def test_threads_size_the_runtime_threadpool_while_no_runner_holds_it(exported, make_inputs):
    from executorch.extension.pybindings import portable_lib

    path, _ = exported("mobileone_s0")
    inputs = make_inputs(1, 64).numpy()
    two = TARGET.load(path, threads=2)
    assert portable_lib._threadpool_get_thread_count() == 2
    again = TARGET.load(path, threads=2)  # the same size: no reset needed
    np.testing.assert_array_equal(two(inputs), again(inputs))
    # resizing would pull the pool from under the loaded programs (the runtime aborts): refused
    with pytest.raises(InvalidSetting, match="process-wide"):
        TARGET.load(path, threads=1)
    del two, again
    gc.collect()
    one = TARGET.load(path, threads=1)
    assert portable_lib._threadpool_get_thread_count() == 1
    assert one(inputs).shape == (1, 1000)


@pytest.mark.parametrize(
    ("shape", "groups", "affine"), [((2, 8, 5, 7), 1, True), ((2, 8, 6), 4, True), ((1, 6, 3, 3), 3, False)]
)
def test_two_pass_group_norm_computes_group_norm(shape, groups, affine, rel_l2):
    generator = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=generator) * 3 + 2
    weight = torch.rand(shape[1], generator=generator) + 0.5 if affine else None
    bias = torch.randn(shape[1], generator=generator) if affine else None
    expected = nn.functional.group_norm(x, groups, weight, bias, eps=1e-5)
    assert rel_l2(_two_pass_group_norm(x, groups, weight, bias, 1e-5), expected) <= 1e-6


class _OffsetGroupNorm(nn.Module):
    """A 1×1 conv whose outputs sit far from zero (mean 10, spread ~1), then GroupNorm over 256 × 1024 values:
    the activation that made ExecuTorch's portable ``native_group_norm`` lose 1e-3 (its one-pass variance)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(groups)
        self.conv = nn.Conv2d(3, 256, 1)
        self.norm = nn.GroupNorm(groups, 256)
        with torch.no_grad():
            self.conv.bias.add_(10.0)
            self.norm.weight.uniform_(0.5, 1.5, generator=generator)
            self.norm.bias.uniform_(-1.0, 1.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


@needs_executorch
@pytest.mark.parametrize("groups", [1, 4])
def test_group_norm_is_delegated_and_keeps_its_accuracy_on_large_means(groups, tmp_path, rel_l2):
    model = _OffsetGroupNorm(groups).eval()
    example = torch.randn(1, 3, 4, 256, generator=torch.Generator().manual_seed(0))
    facts = TARGET.export(model, example, tmp_path, "norm", TargetOptions())  # refused if any op stays portable
    assert facts["group norms"] == "1 as two-pass mean and variance (delegated)"
    with torch.no_grad():
        exact = model.double()(example.double()).float()
    assert rel_l2(TARGET.load(tmp_path / "norm.pte")(example.numpy()), exact) <= PARITY


@needs_executorch
@pytest.mark.slow
def test_mobilevitv2_keeps_parity_at_its_published_size(tmp_path):
    """At 256 px MobileViT v2-100's GroupNorms reduce 65,536 values each; the portable kernel gave rel-L2 1.8e-5."""
    from deployforge import api

    report = api.export("mobilevitv2_100", to="executorch", out=tmp_path, allow_partial=True)
    row = report.stages[-1]
    assert row.stage == "executorch"
    assert row.details.input_shape == (1, 3, 256, 256)
    assert row.parity.rel_l2 <= PARITY
    assert "group_norm" not in row.details.facts["outside"]
