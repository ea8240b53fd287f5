"""``deployforge verify``: re-prove exported artifacts against the original model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DEFAULT_OUT, handles_errors, print_json, progress_status, quiet_converters, stdout


@handles_errors
def verify_command(
    targets: Annotated[
        list[str] | None, typer.Argument(help="Model names or directories (default: everything under --out).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output root written by export.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")] = False,
) -> None:
    """Recompute artifact hashes, re-run the original and every stage, run each ONNX file with onnxruntime.

    Checks each .mlpackage loads with the expected input and output. Exit 1 if anything changed or is
    over tolerance.
    """
    from deployforge.workspace import resolve_model_dirs

    dirs = resolve_model_dirs(targets or [], out)
    quiet_converters()
    from deployforge.verify import verify_directory

    from .render import report_json, stage_notes, waterfall_table

    reports = []
    with progress_status(not as_json) as progress:
        for directory in dirs:
            reports.append(verify_directory(directory, progress))
    if as_json:
        print_json([report_json(r) for r in reports])
    else:
        for report in reports:
            stdout.print(waterfall_table(report, f"{report.model} ({report.directory})"))
            stdout.print("\n".join(stage_notes(report)), highlight=False)
            verdict = "[green]verified[/]" if report.ok else f"[red]FAILED[/]: {'; '.join(report.breaches)}"
            stdout.print(f"{report.model}: {verdict}", highlight=False)
    failed = [r.model for r in reports if not r.ok]
    if failed:
        typer.echo(f"error: verification failed for {', '.join(failed)}", err=True)
        raise typer.Exit(1)
