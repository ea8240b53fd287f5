"""The ncnn target: pnnx's FP32 conversion of every registered model, run by ncnn within 1e-5 of the original.

Each model is exported once per session (``_Artifacts``) from its conditioned, fused and reparameterized form at
the small test side; the assertions below share the artifact. A graph pnnx cannot lower to ncnn layers (a rank-5
view and its ``unbind``, as ``TokenSelfAttention`` was written before it formed heads after the q/k/v split) is
refused at export, naming the ops.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deployforge.errors import DeployforgeError
from deployforge.registry import get_spec, list_models
from deployforge.targets.ncnn import TARGET
from deployforge.targets.protocol import MissingExtra, TargetOptions

BIG_PARAMS_M = 20.0  # as in conftest: variants above this many parameters are slow-marked
FP32_BOUND = 1e-5
TAMPER_FLOOR = 1e-3
# pnnx leaves a rank-5 (B, N, 3, heads, head_dim) view, permuted so the batch is no longer first, and its unbind
# as pnnx ops ncnn has no layer for; no pnnx option lowers them (only optlevel=2 writes ncnn files).
UNLOWERED = ("Tensor.reshape", "torch.unbind")


def _case(name: str):
    slow = get_spec(name).reference.params_m > BIG_PARAMS_M
    return pytest.param(name, marks=[pytest.mark.slow] if slow else [])


MODELS = [_case(s.name) for s in list_models()]


class _Artifacts:
    """Each model's ncnn export, made once per session at batch 1 and the model's test side."""

    def __init__(self, root: Path, deployed_pair) -> None:
        self._root, self._pairs = root, deployed_pair
        self._made: dict[str, tuple[Path, dict[str, str]] | RuntimeError] = {}

    def __call__(self, name: str) -> tuple[Path, dict[str, str]]:
        """``(primary .param path, export facts)``; re-raises the export's RuntimeError if it failed."""
        if name not in self._made:
            _, merged, side = self._pairs(name)
            directory = self._root / name
            directory.mkdir()
            example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
            try:
                facts = TARGET.export(merged, example, directory, name, TargetOptions())
                self._made[name] = (directory / TARGET.files(name)[0], facts)
            except RuntimeError as error:
                self._made[name] = error
        made = self._made[name]
        if isinstance(made, RuntimeError):
            raise made
        return made


@pytest.fixture(scope="session")
def ncnn_artifact(tmp_path_factory, deployed_pair):
    """``ncnn_artifact(name)``: the session's ncnn export of a registered model."""
    return _Artifacts(tmp_path_factory.mktemp("ncnn"), deployed_pair)


def _reference(deployed_pair, make_inputs, name: str) -> tuple[np.ndarray, np.ndarray]:
    original, _, side = deployed_pair(name)
    inputs = make_inputs(2, side)
    with torch.no_grad():
        return inputs.numpy(), original(inputs).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_artifact_runs_within_fp32_bound_of_the_original(
    name, ncnn_artifact, deployed_pair, make_inputs, rel_l2, record_property
):
    path, facts = ncnn_artifact(name)
    inputs, reference = _reference(deployed_pair, make_inputs, name)

    outputs = TARGET.load(path, threads=1)(inputs)

    assert sorted(p.name for p in path.parent.iterdir()) == sorted(TARGET.files(name))
    assert facts["weights"].startswith("fp32") and facts["converter"].startswith("pnnx ")
    assert outputs.shape == reference.shape and outputs.dtype == np.float32
    error = rel_l2(outputs, reference)
    record_property("rel_l2", f"{error:.2e}")  # the per-model table of the junit report
    assert error <= FP32_BOUND


class _RankFiveAttention(torch.nn.Module):
    """The q/k/v split as a rank-5 view and an unbind: the form pnnx cannot lower."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 24, 3, stride=4)
        self.qkv = torch.nn.Linear(24, 72)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        b, n, _ = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, 2, 12).permute(2, 0, 3, 1, 4).unbind(0)
        return ((q @ k.transpose(-2, -1)).softmax(-1) @ v).mean((1, 2))


def test_a_graph_pnnx_cannot_lower_is_refused_naming_the_ops(tmp_path):
    with pytest.raises(RuntimeError, match="could not lower") as refused:
        TARGET.export(_RankFiveAttention().eval(), torch.randn(1, 3, 32, 32), tmp_path, "rank5", TargetOptions())

    assert all(op in str(refused.value) for op in UNLOWERED)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("name", ["fastvit_t8", "mobileone_s0"])
def test_describe_reads_shapes_layers_and_fp32_weights_back(name, ncnn_artifact, deployed_pair):
    path, facts = ncnn_artifact(name)
    _, merged, side = deployed_pair(name)
    weights = path.with_name(TARGET.files(name)[1])

    description = TARGET.describe(path)

    assert description.inputs == {"in0": (1, 3, side, side)}
    assert description.outputs == {"out0": (1, 1000)}
    assert description.ops["Convolution"] > 0 and description.ops["Input"] == 1
    assert sum(description.ops.values()) == int(facts["layers"]) == int(description.facts["layers"])
    assert description.size_bytes == path.stat().st_size + weights.stat().st_size
    # FP32 storage: 4 bytes a parameter, plus a 4-byte storage tag per weight tensor (FP16 would be about 2)
    parameters = sum(p.numel() for p in merged.parameters())
    assert 4 * parameters <= weights.stat().st_size <= 4 * (parameters + sum(description.ops.values()))


@pytest.fixture
def copied_artifact(ncnn_artifact, tmp_path):
    """A copy of mobileone_s0's artifact to damage: ``(param, bin)``."""
    path, _ = ncnn_artifact("mobileone_s0")
    for file in TARGET.files("mobileone_s0"):
        shutil.copy(path.with_name(file), tmp_path / file)
    return tuple(tmp_path / file for file in TARGET.files("mobileone_s0"))


def test_scaled_weights_move_the_outputs_beyond_the_bound(copied_artifact, deployed_pair, make_inputs, rel_l2):
    param, weights = copied_artifact
    inputs, reference = _reference(deployed_pair, make_inputs, "mobileone_s0")
    floats = np.fromfile(weights, dtype=np.float32)
    floats[len(floats) // 3 : len(floats) // 3 + 4096] *= 1.5  # zeros (the FP32 tags) stay zeros
    floats.tofile(weights)

    outputs = TARGET.load(param)(inputs)

    assert rel_l2(outputs, reference) > TAMPER_FLOOR


def test_truncated_weights_fail_to_load(copied_artifact):
    param, weights = copied_artifact
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    with pytest.raises(DeployforgeError, match="cannot load the weights"):
        TARGET.load(param)


@pytest.mark.parametrize("package", ["ncnn", "pnnx"])
def test_missing_runtime_names_the_extra(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)

    with pytest.raises(MissingExtra, match=package) as missing:
        TARGET.require()

    assert "pip install 'deployforge[ncnn]'" in str(missing.value)


def test_require_makes_openmp_threads_sleep_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    TARGET.require()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    TARGET.require()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
