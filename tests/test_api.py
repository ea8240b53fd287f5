"""The Python API: the README's example runs, a user's own module goes through the whole pipeline, bad input is refused.

A user module's BatchNorms get statistics far from init (``deployforge.stress``) before it is handed over: the API
exports a module with its own weights, and identity-like BatchNorms would hide a wrong merge.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import deployforge
from deployforge import api
from deployforge.errors import DeployforgeError, InvalidSetting
from deployforge.stress import stress_weights

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class RepVGGBlock(nn.Module):
    """A user's MobileOne-style block: 3×3 conv-BN, 1×1 conv-BN and a BN skip, merged by timm's convention.

    ``forget_skip`` plants the classic bug: the merged conv leaves the BN skip branch out.
    """

    def __init__(self, channels: int, forget_skip: bool = False) -> None:
        super().__init__()
        self.large = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.small = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.skip = nn.BatchNorm2d(channels)
        self.merged: nn.Conv2d | None = None
        self.forget_skip = forget_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged is not None:
            return torch.relu(self.merged(x))
        return torch.relu(self.large(x) + self.small(x) + self.skip(x))

    @staticmethod
    def _folded(conv: nn.Conv2d | None, bn: nn.BatchNorm2d, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        if conv is None:  # identity as a 3×3 conv
            kernel = torch.zeros(channels, channels, 3, 3)
            kernel[range(channels), range(channels), 1, 1] = 1.0
        else:
            kernel = nn.functional.pad(conv.weight, [(3 - conv.kernel_size[0]) // 2] * 4)
        return kernel * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale

    @torch.no_grad()
    def reparameterize(self) -> None:
        channels = self.skip.num_features
        parts = [
            self._folded(self.large[0], self.large[1], channels),
            self._folded(self.small[0], self.small[1], channels),
        ]
        if not self.forget_skip:
            parts.append(self._folded(None, self.skip, channels))
        self.merged = nn.Conv2d(channels, channels, 3, padding=1)
        self.merged.weight.copy_(sum(w for w, _ in parts))
        self.merged.bias.copy_(sum(b for _, b in parts))
        del self.large, self.small, self.skip


class TinyNet(nn.Module):
    def __init__(self, classes: int = 10, forget_skip: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(RepVGGBlock(16, forget_skip), RepVGGBlock(16, forget_skip))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def _tiny(forget_skip: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return stress_weights(TinyNet(forget_skip=forget_skip), seed=0).eval()


def test_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme"})
    assert (tmp_path / "deployforge-out" / "mobileone_s0" / "mobileone_s0.onnx").is_file()
    assert {p.name for p in (tmp_path / "deployforge-out" / "my_net").iterdir()} == {
        "my_net.onnx",
        "my_net.mlpackage",
        "manifest.json",
        "reference.npz",
    }


def test_a_users_module_goes_through_every_stage(tmp_path):
    net = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    report = deployforge.export(net, input_shape=(1, 3, 64, 64), out=tmp_path, to="all")

    assert report.ok, report.breaches
    assert [row.stage for row in report.stages] == ["fuse", "reparameterize", "trace", "onnx", "coreml-fp16"]
    assert report.stages[1].details.foreign_merged == 2  # both blocks merged through their own reparameterize()
    assert all(row.parity.rel_l2 < row.parity.tolerance for row in report.stages)
    manifest = report.manifest
    assert (manifest.model, manifest.origin, manifest.output.classes) == ("tiny_net", "module", 10)
    assert manifest.weights.conditioning is None and "own weights" in manifest.weights.source
    graph = onnx.load(report.directory / "tiny_net.onnx")
    assert not [n for n in graph.graph.node if n.op_type == "BatchNormalization"]
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == 3  # stem + one conv per merged block
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the user's module is untouched

    verified = deployforge.verify(report.directory)
    assert verified.ok, verified.reports[0].breaches
    (checked,) = verified.reports
    assert sorted(row.stage for row in checked.stages) == ["coreml-fp16", "onnx"]
    assert "cannot be rebuilt" in checked.notes[0] and "reference.npz" in checked.notes[0]


def test_a_wrong_merge_in_a_users_block_is_caught(tmp_path):
    report = deployforge.export(_tiny(forget_skip=True), input_shape=(1, 3, 64, 64), out=tmp_path, to="onnx")

    assert not report.ok
    assert report.breaches[0].startswith("reparameterize: rel-L2")
    assert not (tmp_path / "tiny_net").exists()


def test_example_input_and_name(tmp_path):
    report = deployforge.export(
        _tiny(), example_input=torch.zeros(2, 3, 32, 32), name="edge-v2", out=tmp_path, to="onnx"
    )
    assert report.ok and report.directory == tmp_path / "edge-v2"
    assert report.manifest.input.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "input_shape=(1, 3, H, H)"),
        ({"input_shape": (1, 1, 64, 64)}, "(N, 3, H, H)"),
        ({"input_shape": (1, 3, 64, 48)}, "(N, 3, H, H)"),
        ({"input_shape": (1, 3, 16, 16)}, "outside 32..2048"),
        ({"input_shape": (1, 3, 64, 64), "name": "../up"}, "cannot name a directory"),
        ({"input_shape": (1, 3, 64, 64), "weights": "x.pth"}, "own weights"),
        ({"input_shape": (1, 3, 64, 64), "input_size": 96}, "input side is 64"),
    ],
)
def test_bad_module_settings_are_one_line_errors(tmp_path, kwargs, fragment):
    with pytest.raises(InvalidSetting, match=re.escape(fragment)) as error:
        deployforge.export(_tiny(), out=tmp_path, **kwargs)
    assert "\n" not in str(error.value)
    assert not any(tmp_path.iterdir())


def test_a_module_that_is_not_a_classifier_is_refused(tmp_path):
    with pytest.raises(DeployforgeError, match=r"returns a tensor of shape \(1, 16, 32, 32\)"):
        deployforge.export(nn.Conv2d(3, 16, 3, 2, 1), input_shape=(1, 3, 64, 64), out=tmp_path)


def test_registry_names_refuse_module_options(tmp_path):
    with pytest.raises(DeployforgeError, match="describe a module"):
        deployforge.export("mobileone_s0", input_shape=(1, 3, 64, 64), out=tmp_path)
    with pytest.raises(DeployforgeError, match="did you mean"):
        deployforge.export("mobileone_s9", out=tmp_path)


def test_bench_and_locate_return_typed_reports(tmp_path):
    from deployforge.benchmark import BenchReport
    from deployforge.locate import LocateReport
    from deployforge.options import TimingProtocol

    exported = deployforge.export("mobileone_s0", to="onnx", input_size=64, out=tmp_path, multibranch=True)
    assert exported.ok

    quick = TimingProtocol(runs=3, warmup_s=0.0, min_time_s=0.0)
    notes = []
    timed = deployforge.bench("mobileone_s0", out=tmp_path, protocol=quick, threads=[1, 64], notify=notes.append)
    assert isinstance(timed, BenchReport)
    assert [(row.model, row.pair.threads) for row in timed.rows] == [("mobileone_s0", 1), ("mobileone_s0", 64)]
    assert timed.warnings and notes == [f"warning: {timed.warnings[0]}"]  # 64 threads on fewer cores
    assert all(np.isfinite(row.pair.speedup) for row in timed.rows)

    located = api.locate("mobileone_s0", out=tmp_path)
    assert isinstance(located, LocateReport) and not located.departures
