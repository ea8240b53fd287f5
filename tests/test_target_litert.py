"""The LiteRT target: every registered model converts with litert-torch, and ai-edge-litert's interpreter runs the
``.tflite`` within FP32 parity of the multi-branch original; the file says what it holds, and its weights count.

Each model is exported once per module (:class:`_Artifacts`); the tests share the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from deployforge.registry import get_spec, list_models  # noqa: E402
from deployforge.targets import get_target  # noqa: E402
from deployforge.targets.litert import TARGET  # noqa: E402
from deployforge.targets.protocol import MissingExtra, TargetOptions, run_in_batches  # noqa: E402
from deployforge.targets.rewrites import SPLIT_DW7X7  # noqa: E402

BIG_PARAMS_M = 20.0  # as in conftest: variants above this many parameters are slow-marked
MODELS = [
    pytest.param(s.name, marks=pytest.mark.slow) if s.reference.params_m > BIG_PARAMS_M else s.name
    for s in list_models()
]
FP32_BOUND = 1e-5
TAMPERED_FLOOR = 1e-3
BATCH = 2  # two images through the batch-1 file: the runner is called more than once


class _Artifacts:
    """Each model's ``.tflite``, exported once (batch 1, the pipeline's shape) into its own directory."""

    def __init__(self, root: Path, deployed_pair) -> None:
        self._root, self._pair, self._paths = root, deployed_pair, {}

    def __call__(self, name: str) -> Path:
        if name not in self._paths:
            _, merged, side = self._pair(name)
            directory = self._root / name
            directory.mkdir()
            example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
            TARGET.export(merged, example, directory, name, TargetOptions())
            assert sorted(p.name for p in directory.iterdir()) == list(TARGET.files(name))  # nothing else written
            self._paths[name] = directory / TARGET.files(name)[0]
        return self._paths[name]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, deployed_pair) -> _Artifacts:
    """``artifacts(name)``: the path of the model's exported ``.tflite``."""
    return _Artifacts(tmp_path_factory.mktemp("litert"), deployed_pair)


def _error(path: Path, name: str, deployed_pair, make_inputs, rel_l2) -> float:
    """rel-L2 of the file run by the interpreter against the original's outputs, on ``BATCH`` N(0, 1) images."""
    original, _, side = deployed_pair(name)
    inputs = make_inputs(BATCH, side)
    with torch.no_grad():
        reference = original(inputs)
    outputs = run_in_batches(TARGET.load(path, threads=1), inputs.numpy(), 1)
    assert outputs.shape == tuple(reference.shape)
    return rel_l2(outputs, reference)


def _flip_first_weight(path: Path) -> str:
    """Negate every other element of the first operator's float32 weight tensor, in the file's bytes.

    Not a plain scaling: a weight followed by a normalization would hide one. Returns the tensor's name.
    """
    from ai_edge_litert import schema_py_generated as schema

    data = bytearray(path.read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    for o in range(graph.OperatorsLength()):
        for index in graph.Operators(o).InputsAsNumpy():
            tensor = graph.Tensors(int(index)) if index >= 0 else None
            if tensor is None or tensor.Type() != schema.TensorType.FLOAT32 or tensor.ShapeLength() < 2:
                continue
            buffer = model.Buffers(tensor.Buffer())
            if buffer.DataLength() == 0:  # an activation, not a constant
                continue
            weights = buffer.DataAsNumpy().view(np.float32)  # a view into ``data``: writing it edits the file bytes
            weights[::2] *= -1
            path.write_bytes(data)
            return tensor.Name().decode()
    raise AssertionError(f"no float32 weight tensor in {path}")


@pytest.mark.parametrize("name", MODELS)
def test_interpreter_matches_original_and_file_reads_back(
    name, artifacts, deployed_pair, make_inputs, rel_l2, record_property
):
    """One test per model: conversion is most of the cost, and tests of one model spread over two xdist workers
    would each convert it."""
    error = _error(artifacts(name), name, deployed_pair, make_inputs, rel_l2)
    record_property("rel_l2", f"{error:.2e}")  # the per-model table of the junit report
    assert error <= FP32_BOUND

    _, _, side = deployed_pair(name)
    description = TARGET.describe(artifacts(name))
    # NCHW float32 in, float32 logits out: litert-torch's NHWC layout stays inside the graph
    assert list(description.inputs.values()) == [(1, 3, side, side)]
    assert list(description.outputs.values()) == [(1, get_spec(name).num_classes)]
    assert description.facts["input dtype"] == description.facts["output dtype"] == "float32"
    assert sum(description.ops.values()) == int(description.facts["operators"]) > 0
    assert description.ops.get("CONV_2D", 0) > 0
    constants = description.facts["constant tensors"]
    assert "float32" in constants and "float16" not in constants and "int8" not in constants  # FP32 weights
    assert description.size_bytes == artifacts(name).stat().st_size


@pytest.mark.parametrize("name", ["fastvit_t8", "mobileone_s0", "mobilevit_xxs", "efficientformer_l1"])
def test_tampered_weights_break_parity(name, artifacts, deployed_pair, make_inputs, rel_l2, tmp_path):
    tampered = tmp_path / "tampered.tflite"
    tampered.write_bytes(artifacts(name).read_bytes())
    flipped = _flip_first_weight(tampered)
    assert tampered.read_bytes() != artifacts(name).read_bytes(), flipped
    assert _error(tampered, name, deployed_pair, make_inputs, rel_l2) > TAMPERED_FLOOR, flipped


def test_split_dw7x7_keeps_parity_and_splits_every_7x7_depthwise(
    artifacts, deployed_pair, make_inputs, rel_l2, tmp_path
):
    _, merged, side = deployed_pair("fastvit_t8")
    example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    facts = TARGET.export(merged, example, tmp_path, "fastvit_t8", TargetOptions(rewrites=(SPLIT_DW7X7,)))
    split = tmp_path / TARGET.files("fastvit_t8")[0]
    assert facts[SPLIT_DW7X7] == "10 depthwise 7x7 convolutions split"
    assert _error(split, "fastvit_t8", deployed_pair, make_inputs, rel_l2) <= FP32_BOUND
    plain, rewritten = TARGET.describe(artifacts("fastvit_t8")).ops, TARGET.describe(split).ops
    assert rewritten["DEPTHWISE_CONV_2D"] == plain["DEPTHWISE_CONV_2D"] + 2 * 10  # each split conv is three
    assert rewritten["ADD"] == plain["ADD"] + 2 * 10


def test_xnnpack_takes_every_operator_of_fastvit(artifacts):
    facts = TARGET.describe(artifacts("fastvit_t8")).facts
    assert facts["xnnpack delegate"] == f"{facts['operators']} of {facts['operators']} ops"


def test_runner_keeps_its_outputs_across_calls(artifacts, make_inputs):
    run = TARGET.load(artifacts("mobileone_s0"), threads=2)
    inputs = make_inputs(2, 64).numpy()
    first = run(inputs[:1])
    kept = first.copy()
    second = run(inputs[1:])
    assert first.dtype == np.float32 and first.shape == second.shape == (1, 1000)
    np.testing.assert_array_equal(first, kept)  # not a view the next invoke overwrote
    assert not np.array_equal(first, second)


MODULES = [("ai_edge_litert", "ai-edge-litert"), ("litert_torch", "litert-torch")]


@pytest.mark.parametrize(("module", "package"), MODULES)
def test_missing_runtime_or_converter_names_the_extra(module, package, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    if module == "ai_edge_litert":
        monkeypatch.delitem(sys.modules, "ai_edge_litert.interpreter", raising=False)
    with pytest.raises(MissingExtra, match=package) as caught:
        get_target("litert").require()
    assert "pip install 'deployforge[litert]'" in str(caught.value)
    assert caught.value.extra == "litert"
