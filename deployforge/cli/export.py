"""``deployforge export``: run the pipeline for one or more models and write their artifacts.

Several models are exported one after another in one process, so the imports and the converters' warm-up are
paid once (about 5 s a model when each runs as its own command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deployforge.errors import DeployforgeError
from deployforge.options import (
    DEFAULT_OPSET,
    MAX_BATCH,
    MAX_INPUT_SIZE,
    MAX_OPSET,
    MIN_INPUT_SIZE,
    MIN_OPSET,
    ExportSettings,
    Precision,
    Target,
    names,
    parse_batch,
    target_names,
)

from .common import DEFAULT_OUT, handles_errors, print_json, progress_status, quiet_converters, stderr, stdout


@handles_errors
def export_command(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Registered model name(s) (see `deployforge list`); several are exported in one process.",
            metavar="MODEL...",
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help=f"Artifacts to write: {'|'.join(target_names())}|all, or a comma-separated list (onnx,executorch). "
            "'all' is ONNX + Core ML; executorch, litert and ncnn need their extras (pip install "
            "'deployforge\\[runtimes]'); ort writes ONNX Runtime Mobile's .ort and its operator config.",
        ),
    ] = Target.ALL.value,
    out: Annotated[Path, typer.Option(help="Output root; artifacts go to OUT/MODEL/.")] = DEFAULT_OUT,
    weights: Annotated[
        Path | None, typer.Option(help="Checkpoint (.pth or .safetensors; timm key names accepted).")
    ] = None,
    precision: Annotated[
        str, typer.Option(help=f"Core ML compute precision: {names(Precision)}.")
    ] = Precision.FP16.value,
    opset: Annotated[int, typer.Option(help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}.")] = DEFAULT_OPSET,
    batch: Annotated[
        str, typer.Option(help=f"Batch size: 1 to {MAX_BATCH}, or 'dynamic' (ONNX; Core ML then uses 1).")
    ] = "dynamic",
    input_size: Annotated[
        int | None,
        typer.Option(help=f"Square input side, {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} (default: the model's)."),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(
            help="Classifier outputs (default: the checkpoint's, read from its classifier's shapes, else the "
            "model's 1000).",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="A folder of photos (JPEG, PNG, ...) to prove every stage and artifact on instead of drawn inputs: "
            "resized and centre-cropped to the input size, normalized as the model expects; the manifest lists them.",
        ),
    ] = None,
    multibranch: Annotated[
        bool,
        typer.Option(
            "--multibranch",
            help="Also write MODEL.multibranch.onnx, the original before fusion, the baseline `bench` times "
            "against (bench builds it itself when it is missing).",
        ),
    ] = False,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="ExecuTorch: accept a graph XNNPACK does not delegate whole (the rest runs on portable kernels); "
            "without it such an export fails, naming the ops left outside.",
        ),
    ] = False,
    rewrite: Annotated[
        list[str] | None,
        typer.Option(
            "--rewrite",
            help="An exact graph rewrite a chosen target offers (repeatable), proven by the same waterfall, e.g. "
            "split-dw7x7 for executorch and litert (docs/runtimes.md); unknown ones are refused, naming those offered.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Fuse BatchNorm, reparameterize, trace and export each MODEL, proving parity at every stage.

    Writes OUT/MODEL/ with the artifacts, reference.npz (the golden vectors) and manifest.json.

    Artifacts: MODEL.onnx (onnx), MODEL.mlpackage (coreml), MODEL.pte (executorch), MODEL.tflite (litert),
    MODEL.ncnn.param + MODEL.ncnn.bin (ncnn), MODEL.ort + MODEL.required_operators.config (ort); each is run on
    its own runtime against the multi-branch original.

    A model whose stages breach a tolerance writes nothing; the others are still exported, and the command exits 1.
    """
    batch_size = parse_batch(batch)
    rewrites = tuple(rewrite or ())
    # every setting checked first
    ExportSettings(to, precision, opset, batch_size, input_size, multibranch, allow_partial, rewrites)
    if weights is not None and len(models) > 1:
        raise DeployforgeError("--weights is one checkpoint for one model; export the models one at a time")
    from deployforge import api

    specs = [api.resolve_model(name) for name in dict.fromkeys(models)]  # every name checked before any export
    quiet_converters()

    from .render import classes_line, export_json, runtime_warnings, size_line, stage_notes, waterfall_table

    reports = []
    for spec in specs:
        with progress_status(not as_json) as progress:
            report = api.export(
                spec,
                to=to,
                out=out,
                weights=weights,
                num_classes=num_classes,
                precision=precision,
                opset=opset,
                batch=batch_size,
                input_size=input_size,
                multibranch=multibranch,
                allow_partial=allow_partial,
                rewrites=rewrites,
                images=images,
                progress=progress,
            )
        for line in report.notes:
            stderr.print(f"warning: {line}", highlight=False, soft_wrap=True)
        reports.append(report)
        for line in runtime_warnings(report):
            stderr.print(f"warning: {line}", highlight=False, soft_wrap=True)
        if not as_json:
            stdout.print(waterfall_table(report, f"{spec.name}: parity against the multi-branch original"))
            stdout.print("\n".join(stage_notes(report)), highlight=False)
            stdout.print(size_line(report.manifest.size), highlight=False)
            if classes_line(report):
                stdout.print(classes_line(report), highlight=False)
        if not report.ok:
            typer.echo(f"error: {spec.name}: parity breached, nothing written: {'; '.join(report.breaches)}", err=True)
        elif not as_json:
            stdout.print(f"wrote {report.directory}/: {', '.join(report.manifest.artifacts)}")
    if as_json:
        print_json(export_json(reports[0]) if len(reports) == 1 else [export_json(r) for r in reports])
    if not all(report.ok for report in reports):
        raise typer.Exit(1)
