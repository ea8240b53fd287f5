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
    """Recompute artifact hashes, re-run the original and every stage, run each ONNX file with onnxruntime.

    Checks each .mlpackage loads with the expected input and output. Exit 1 if anything changed or is
    over tolerance. With --locate, searches one export layer by layer instead; exit 1 if a layer departs.
    """
    from deployforge.workspace import resolve_model_dirs

    if locate is not None:
        _locate(locate, targets or [], out, as_json)
        return
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


def _locate(target: str, targets: list[str], out: Path, as_json: bool) -> None:
    """``verify --locate``: one export's per-layer search, a table per artifact (or JSON); exit 1 on a departure."""
    from deployforge.errors import DeployforgeError
    from deployforge.workspace import resolve_model_dirs

    if targets:
        raise DeployforgeError(f"--locate searches one export; drop the other targets ({' '.join(targets)})")
    dirs = resolve_model_dirs([target], out)
    if len(dirs) > 1:
        names = ", ".join(d.name for d in dirs)
        raise DeployforgeError(f"--locate searches one export; {target} holds {len(dirs)} ({names}): name one")
    quiet_converters()
    from deployforge.locate import locate_directory

    from .render import locate_json, locate_table, locate_verdict

    with progress_status(not as_json) as progress:
        report = locate_directory(dirs[0], progress)
    if not report.searched and not report.departures:
        reasons = "; ".join(f"{loc.file}: {loc.unavailable}" for loc in report.locations)
        raise DeployforgeError(f"nothing in {dirs[0]} can be searched layer by layer here ({reasons})")
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
