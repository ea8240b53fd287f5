"""Peer baselines: the same weights exported the way a user of another tool does it, timed against ours.

timm is the peer for every family it ships: its model gets seeded, stressed random weights; our export
loads that very state dict (through the family's key map). timm's reparameterized model is exported through
timm's own ``onnx_export``, once with the TorchScript exporter (timm's default, what a timm user gets) and
once with the torch.export-based (dynamo) exporter. Those two graphs and our multi-branch original are each
checked to compute what our deployed graph computes (rel-L2 on the parity batch) before anything is timed,
then all four are timed interleaved in one run (:func:`deployforge.benchmark.bench_rows`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from .benchmark import BaselineGraph, BenchRow, Peak, bench_rows, check_baselines, onnx_pair
from .errors import DeployforgeError
from .measure import onnx_macs
from .options import DEFAULT_OPSET, Against, Baseline, ExportSettings, Target, TimingProtocol
from .pipeline import DEFAULT_SEED, export, parity_inputs
from .registry import ModelSpec
from .stress import stress_weights
from .targets.onnx import INPUT_NAME, OUTPUT_NAME


def _timm_model(spec: ModelSpec) -> torch.nn.Module:
    try:
        import timm
    except ImportError:
        raise DeployforgeError("timm is not installed; pip install timm to bench against it") from None
    if spec.timm_name is None:
        raise DeployforgeError(f"{spec.name} has no timm counterpart; bench it against its multi-branch original")
    torch.manual_seed(DEFAULT_SEED)
    return stress_weights(timm.create_model(spec.timm_name, pretrained=False), DEFAULT_SEED).eval()


class PeerExporter(str, enum.Enum):
    """The exporter a timm user picks in ``timm.utils.onnx.onnx_export``."""

    TORCHSCRIPT = "torchscript"  # timm's default (``use_dynamo=False``)
    DYNAMO = "dynamo"


# The bench row each of timm's exports yields.
PEER_BASELINES = {PeerExporter.TORCHSCRIPT: Baseline.TIMM, PeerExporter.DYNAMO: Baseline.TIMM_DYNAMO}


def export_timm_reparameterized(
    model: torch.nn.Module,
    input_size: int,
    path: Path,
    opset: int,
    exporter: PeerExporter = PeerExporter.TORCHSCRIPT,
) -> Path:
    """Export timm's model the way a timm user does: ``reparameterize_model``, then timm's own ``onnx_export``.

    Args:
        model: timm's train-time model (not modified).
        input_size: square input side.
        path: the ONNX file to write.
        opset: ONNX opset.
        exporter: TorchScript (timm's default) or the torch.export-based exporter.

    Returns:
        ``path``.
    """
    from timm.utils import reparameterize_model
    from timm.utils.onnx import onnx_export

    deployed = reparameterize_model(model).eval()  # reparameterize_model works on a copy
    onnx_export(
        deployed,
        str(path),
        input_size=(3, input_size, input_size),
        batch_size=2,
        opset=opset,
        check=False,
        use_dynamo=exporter is PeerExporter.DYNAMO,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
    )
    return path


@dataclass(frozen=True)
class TimmPeer:
    """Our export and timm's, of the same weights, each baseline shown to compute what ours computes.

    Attributes:
        spec: the registered model.
        ours: our export directory (``OUT/MODEL`` with the ONNX pair and manifest).
        baselines: timm's TorchScript export, timm's dynamo export and our multi-branch original (the order of
            ``Against.TIMM.baselines``), each with its rel-L2 against our deployed graph on the parity batch.
    """

    spec: ModelSpec
    ours: Path
    baselines: tuple[BaselineGraph, ...]


def _macs(path: Path) -> int | None:
    try:
        return onnx_macs(onnx.load(str(path)))
    except ValueError:  # a counted node whose shapes the peer's graph leaves uninferred: GFLOP/s unknown
        return None


def _export_peer(
    model: torch.nn.Module, spec: ModelSpec, input_size: int, path: Path, opset: int, exporter: PeerExporter
) -> BaselineGraph:
    try:
        export_timm_reparameterized(model, input_size, path, opset, exporter)
    except Exception as error:  # the exporters raise many unrelated types
        lines = str(error).strip().splitlines()
        raise DeployforgeError(
            f"{spec.name}: timm's {exporter.value} ONNX export failed ({lines[0] if lines else type(error).__name__})"
        ) from error
    return BaselineGraph(PEER_BASELINES[exporter], path, _macs(path))


def prepare_timm_peer(
    spec: ModelSpec,
    scratch: Path,
    opset: int = DEFAULT_OPSET,
    progress: Callable[[str], None] = lambda _: None,
    input_size: int | None = None,
) -> TimmPeer:
    """Export timm's model (both exporters) and ours from the same stressed random weights, and check they agree.

    Args:
        spec: a registered model timm ships.
        scratch: a directory for the checkpoint and every export.
        opset: ONNX opset of every export.
        progress: called as each step starts.
        input_size: square input side of every export (default: the variant's published size).

    Returns:
        Our export and the three baselines, checked.

    Raises:
        BaselineDisagrees: a baseline does not compute what our deployed graph computes (rel-L2 over 1e-5).
        DeployforgeError: timm missing or without this model, or a failed export.
    """
    from safetensors.torch import save_file

    progress(f"{spec.name}: build timm's {spec.timm_name} with stressed random weights")
    model = _timm_model(spec)
    size = input_size or spec.input_size
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    weights = scratch / f"{spec.name}.timm.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(weights))
    settings = ExportSettings(target=Target.ONNX, opset=opset, input_size=input_size, multibranch=True)
    report = export(spec, settings, out=scratch / "ours", weights=weights, progress=progress)
    if not report.ok:
        raise DeployforgeError(f"{spec.name}: export failed parity ({'; '.join(report.breaches)})")
    manifest, multi, ours = onnx_pair(report.directory)
    graphs = {Baseline.MULTI_BRANCH: BaselineGraph(Baseline.MULTI_BRANCH, multi, manifest.size.macs_onnx_multibranch)}
    for exporter in PeerExporter:
        progress(f"{spec.name}: export timm's reparameterized model with the {exporter.value} exporter")
        path = scratch / f"{spec.name}.timm-{exporter.value}.onnx"
        graphs[PEER_BASELINES[exporter]] = _export_peer(model, spec, size, path, opset, exporter)
    progress(f"{spec.name}: check every baseline computes what ours computes")
    inputs = parity_inputs(size, count=2).numpy()
    checked = check_baselines(ours, [graphs[kind] for kind in Against.TIMM.baselines], inputs)
    return TimmPeer(spec, report.directory, checked)


def bench_timm_peer(
    peer: TimmPeer,
    protocols: Sequence[TimingProtocol],
    progress: Callable[[str], None] = lambda _: None,
    peaks: Sequence[Peak] = (),
) -> list[BenchRow]:
    """Time timm's two exports, our multi-branch original and our deployed graph interleaved, once per protocol.

    Args:
        peer: the exports, from :func:`prepare_timm_peer`.
        protocols: one timing run per protocol (thread count).
        progress: called as each timing starts.
        peaks: FP32 GEMM peaks measured in this run (:func:`deployforge.benchmark.measure_peak`).

    Returns:
        Three rows per protocol (``timm``, ``timm-dynamo``, ``multi-branch``), all from the same run; ``rel_l2``
        is each baseline against ours on the parity batch.
    """
    manifest, _, ours = onnx_pair(peer.ours)
    return bench_rows(peer.spec.name, manifest.size, ours, peer.baselines, protocols, progress, peaks)
