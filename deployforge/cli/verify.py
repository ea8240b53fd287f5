"""``deployforge verify``: re-prove exported artifacts against the original model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deployforge.errors import DeployforgeError

from .common import DEFAULT_OUT, handles_errors, print_json, progress_status, quiet_converters, stdout


def resolve_model_dirs(targets: list[str], out: Path) -> list[Path]:
    """Map CLI targets (model names or directories; none = everything under ``out``) to model directories.

    Raises:
        DeployforgeError: a target that is neither, or no artifacts found.
    """
    from deployforge.verify import find_model_dirs

    dirs: list[Path] = []
    for target in targets or [str(out)]:
        path = Path(target)
        if path.is_dir():
            found = find_model_dirs(path)
        elif (out / target).is_dir():
            found = find_model_dirs(out / target)
        else:
            from deployforge.registry import get_spec

            get_spec(target)  # unknown names get the close-match error
            raise DeployforgeError(f"no artifacts for {target} under {out}; run `deployforge export {target}` first")
        if not found:
            raise DeployforgeError(
                f"no exported artifacts (manifest.json) under {path}; run `deployforge export MODEL`"
            )
        dirs += found
    return dirs


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
    dirs = resolve_model_dirs(targets or [], out)
    quiet_converters()
    from deployforge.verify import verify_directory

    from .render import stage_notes, waterfall_table

    reports = []
    with progress_status(not as_json) as progress:
        for directory in dirs:
            reports.append(verify_directory(directory, progress))
    if as_json:
        print_json([r.as_dict() for r in reports])
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
