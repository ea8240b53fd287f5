"""``deployforge export``: run the pipeline for one model and write its artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deployforge.errors import DeployforgeError

from .common import DEFAULT_OUT, handles_errors, print_json, progress_status, quiet_converters, stdout


def parse_batch(text: str) -> int | None:
    """``dynamic`` → ``None``; a positive integer → itself.

    Raises:
        DeployforgeError: anything else.
    """
    if text == "dynamic":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise DeployforgeError(f"--batch expects a positive integer or 'dynamic'; got '{text}'")


@handles_errors
def export_command(
    model: Annotated[str, typer.Argument(help="Registered model name (see `deployforge list`).")],
    to: Annotated[str, typer.Option("--to", help="Artifacts to write: onnx, coreml or all.")] = "all",
    out: Annotated[Path, typer.Option(help="Output root; artifacts go to OUT/MODEL/.")] = DEFAULT_OUT,
    weights: Annotated[
        Path | None, typer.Option(help="Checkpoint (.pth or .safetensors; timm key names accepted).")
    ] = None,
    precision: Annotated[str, typer.Option(help="Core ML compute precision: fp16 or fp32.")] = "fp16",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    batch: Annotated[str, typer.Option(help="Batch size: a positive integer or 'dynamic' (ONNX).")] = "dynamic",
    input_size: Annotated[int | None, typer.Option(help="Square input side (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Fuse BatchNorm, reparameterize, trace and export MODEL, proving parity at every stage.

    Writes OUT/MODEL/MODEL.onnx (reparameterized), MODEL.multibranch.onnx (the original, for bench),
    MODEL.mlpackage and manifest.json. Nothing is written if any stage breaches its tolerance (exit 1).
    """
    from deployforge.pipeline import TARGETS

    if to not in TARGETS:
        raise DeployforgeError(f"unknown --to '{to}'; choose one of {', '.join(TARGETS)}")
    if precision not in ("fp16", "fp32"):
        raise DeployforgeError(f"unknown --precision '{precision}'; choose fp16 or fp32")
    fixed_batch = parse_batch(batch)
    from deployforge.registry import get_spec

    spec = get_spec(model)
    if weights is not None and not weights.is_file():
        raise DeployforgeError(f"weights file not found: {weights}; pass an existing .pth or .safetensors file")
    quiet_converters()
    from deployforge import pipeline

    from .render import stage_notes, waterfall_table

    with progress_status(not as_json) as progress:
        report = pipeline.export(
            spec,
            to=to,
            out=out,
            weights=weights,
            precision=precision,
            opset=opset,
            batch=fixed_batch,
            input_size=input_size,
            progress=progress,
        )
    if as_json:
        print_json({**report.as_dict(), "size": report.card["size"], "artifacts": report.card["artifacts"]})
    else:
        stdout.print(waterfall_table(report, f"{spec.name}: parity against the multi-branch original"))
        stdout.print("\n".join(stage_notes(report)), highlight=False)
        size = report.card["size"]
        stdout.print(
            f"params: {size['params_train'] / 1e6:.3f} M train-time, {size['params_reparam_torch'] / 1e6:.3f} M "
            f"reparameterized, {size.get('params_onnx', size['params_deployed_torch']) / 1e6:.3f} M deployed; "
            f"MACs: {size.get('macs_onnx', size['macs_torch']) / 1e9:.3f} G (torch {size['macs_torch'] / 1e9:.3f} G)"
        )
    if not report.ok:
        typer.echo(f"error: parity breached, nothing written: {'; '.join(report.breaches)}", err=True)
        raise typer.Exit(1)
    if not as_json:
        stdout.print(f"wrote {report.directory}/: {', '.join(report.card['artifacts'])}")
