"""Peer baselines: the same weights exported the way a user of another tool does it, timed against ours.

timm is the peer for every family it ships: its model gets seeded, stressed random weights; our export
loads that very state dict (through the family's key map), so both graphs compute the same function. That
is checked (rel-L2 on the parity batch) before anything is timed. Our export of those weights serves as
well for the multi-branch comparison (:func:`deployforge.bench.bench_export` on :attr:`TimmPeer.ours`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from .bench import BenchRow, bench_pair, onnx_pair
from .errors import DeployforgeError
from .export.onnx import INPUT_NAME, OUTPUT_NAME, run_onnx
from .measure import onnx_macs
from .options import DEFAULT_OPSET, Against, ExportSettings, Target, TimingProtocol
from .parity import TOLERANCES, compare
from .pipeline import DEFAULT_SEED, export, parity_inputs
from .registry import ModelSpec
from .stress import stress_weights


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
    """timm's own export and ours, of the same weights, shown to compute the same function.

    Attributes:
        spec: the registered model.
        ours: our export directory (``OUT/MODEL`` with the ONNX pair and manifest).
        peer: timm's reparameterized ONNX.
        peer_macs: MACs per image of timm's graph.
        rel_l2: timm's outputs against ours on the parity batch.
    """

    spec: ModelSpec
    ours: Path
    peer: Path
    peer_macs: int
    rel_l2: float


def prepare_timm_peer(
    spec: ModelSpec, scratch: Path, opset: int = DEFAULT_OPSET, progress: Callable[[str], None] = lambda _: None
) -> TimmPeer:
    """Export timm's model and ours from the same stressed random weights, and check they agree.

    Args:
        spec: a registered model timm ships.
        scratch: a directory for the checkpoint and both exports.
        opset: ONNX opset of both exports.
        progress: called as each step starts.

    Returns:
        Both exports.

    Raises:
        DeployforgeError: timm missing or without this model, a failed export, or the two exports disagree.
    """
    from safetensors.torch import save_file

    progress(f"{spec.name}: build timm's {spec.timm_name} with stressed random weights")
    model = _timm_model(spec)
    Path(scratch).mkdir(parents=True, exist_ok=True)
    weights = Path(scratch) / f"{spec.name}.timm.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(weights))
    settings = ExportSettings(target=Target.ONNX, opset=opset)
    report = export(spec, settings, out=Path(scratch) / "ours", weights=weights, progress=progress)
    if not report.ok:
        raise DeployforgeError(f"{spec.name}: export failed parity ({'; '.join(report.breaches)})")
    ours = report.directory / f"{spec.name}.onnx"
    progress(f"{spec.name}: export timm's reparameterized model")
    peer = export_timm_reparameterized(model, spec.input_size, Path(scratch) / f"{spec.name}.timm.onnx", opset)
    inputs = parity_inputs(spec.input_size, count=2).numpy()
    agreement = compare(run_onnx(peer, inputs), run_onnx(ours, inputs), TOLERANCES.onnx)
    if not agreement.ok:
        raise DeployforgeError(
            f"{spec.name}: timm's export and ours disagree (rel-L2 {agreement.rel_l2:.3g}); timing them would "
            "compare two different functions"
        )
    return TimmPeer(spec, report.directory, peer, onnx_macs(onnx.load(str(peer))), agreement.rel_l2)


def bench_timm_peer(
    peer: TimmPeer, protocols: Sequence[TimingProtocol], progress: Callable[[str], None] = lambda _: None
) -> list[BenchRow]:
    """Time timm's export against ours, interleaved, once per protocol (thread count).

    Args:
        peer: both exports, from :func:`prepare_timm_peer`.
        protocols: one timing protocol per row.
        progress: called as each timing starts.

    Returns:
        One row per protocol; ``rel_l2`` is timm's export against ours on the parity batch.
    """
    manifest, _, ours = onnx_pair(peer.ours)
    rows = []
    for protocol in protocols:
        progress(f"{peer.spec.name}: timing timm vs ours at {protocol.threads} thread(s)")
        pair = bench_pair(peer.peer, ours, protocol, peer.peer_macs, manifest.size.macs_onnx)
        rows.append(BenchRow(peer.spec.name, Against.TIMM, manifest.size, pair, peer.rel_l2))
    return rows
