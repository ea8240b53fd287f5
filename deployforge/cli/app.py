"""The ``deployforge`` command. Heavy libraries (torch, onnxruntime, coremltools) load only inside commands."""

from __future__ import annotations

from typing import Annotated

import typer

from deployforge import __version__

from . import bench, export, list_models, verify

app = typer.Typer(
    name="deployforge",
    help=(
        "Ship mobile vision transformers provably unchanged: fuse BatchNorm, reparameterize multi-branch "
        "blocks, trace, export to ONNX and Core ML, and prove parity against the original at every stage."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"deployforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Ship mobile vision transformers provably unchanged."""


app.command("export")(export.export_command)
app.command("verify")(verify.verify_command)
app.command("bench")(bench.bench_command)
app.command("list")(list_models.list_command)


def main() -> None:
    """Console-script entry point."""
    app()
