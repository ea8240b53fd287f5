"""The ``deployforge`` command. Heavy libraries (torch, onnxruntime, coremltools) load only inside commands."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from deployforge import __version__

from . import bench, export, list_models, verify
from .common import stderr

try:  # typer 0.2x ships its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - a typer that uses click itself
    from click.exceptions import NoArgsIsHelpError, UsageError


class OneLineUsageErrors(TyperGroup):
    """Report click's usage errors (a non-number for a number, an unknown flag) as one ``error:`` line, exit 2.

    Without this, typer draws a multi-line usage box; every other error of the CLI is one line.
    """

    def main(self, args: Any = None, standalone_mode: bool = True, **extra: Any) -> Any:  # noqa: D102
        if not standalone_mode:
            return super().main(args, standalone_mode=False, **extra)
        try:
            result = super().main(args, standalone_mode=False, **extra)
        except NoArgsIsHelpError as error:
            typer.echo(error.ctx.get_help())
            sys.exit(error.exit_code)
        except UsageError as error:
            where = error.ctx.command_path if error.ctx is not None else "deployforge"
            message = f"{error.format_message()} (see `{where} --help`)"
            stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            sys.exit(error.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
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
