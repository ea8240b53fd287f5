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
    locate: Annotated[
        str | None,
        typer.Option(
            "--locate",
            metavar="MODEL|DIR",
            help="Find the first layer (by source module path) where each artifact of one export departs from "
            "the original, instead of the waterfall.",
        ),
    ] = None,
) -> None:
    """Recompute artifact hashes and run every artifact against the golden vectors (reference.npz).

    Each ONNX file runs in onnxruntime and each .mlpackage in the Core ML interpreter, on the inputs stored at
    export. Where torch is installed and the original can be rebuilt, it is checked against the stored outputs and
    every stage re-runs; elsewhere a note says why not. Exit 1 if anything changed or is over tolerance. With
    --locate, searches one export layer by layer instead; exit 1 if a layer departs.
    """
    from deployforge import api

    if locate is not None:
        _locate(locate, targets or [], out, as_json)
        return
    quiet_converters()
    from .render import report_json, stage_notes, waterfall_table

    with progress_status(not as_json) as progress:
        reports = api.verify(targets or [], out=out, progress=progress).reports
    if as_json:
        print_json([report_json(r) for r in reports])
    else:
        for report in reports:
            stdout.print(waterfall_table(report, f"{report.model} ({report.directory})"))
            stdout.print("\n".join(stage_notes(report) + [f"  note: {line}" for line in report.notes]), highlight=False)
            verdict = "[green]verified[/]" if report.ok else f"[red]FAILED[/]: {'; '.join(report.breaches)}"
            stdout.print(f"{report.model}: {verdict}", highlight=False)
    failed = [r.model for r in reports if not r.ok]
    if failed:
        typer.echo(f"error: verification failed for {', '.join(failed)}", err=True)
        raise typer.Exit(1)


def _locate(target: str, targets: list[str], out: Path, as_json: bool) -> None:
    """``verify --locate``: one export's per-layer search, a table per artifact (or JSON); exit 1 on a departure."""
    from deployforge import api
    from deployforge.errors import DeployforgeError

    if targets:
        raise DeployforgeError(f"--locate searches one export; drop the other targets ({' '.join(targets)})")
    quiet_converters()
    from .render import locate_json, locate_table, locate_verdict

    with progress_status(not as_json) as progress:
        report = api.locate(target, out=out, progress=progress)
    if as_json:
        print_json(locate_json(report))
    else:
        for location in report.locations:
            if location.layers:
                title = f"{report.model}: {location.file} against the original, layer by layer (execution order)"
                stdout.print(locate_table(location, title))
            stdout.print(locate_verdict(location), highlight=False)
    departures = report.departures
    if departures:
        typer.echo(f"error: {report.model} departs from the original: {'; '.join(departures)}", err=True)
        raise typer.Exit(1)
