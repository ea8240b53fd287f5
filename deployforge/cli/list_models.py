"""``deployforge list``: the registered models."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from deployforge.registry import list_models

from .common import handles_errors, print_json, stdout


@handles_errors
def list_command(
    family: Annotated[str | None, typer.Option(help="Only this family (fastvit, ...).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List every model deployforge ships, with its input size and reference size figures."""
    specs = list_models(family)
    rows = [
        {
            "name": s.name,
            "family": s.family,
            "input_size": s.input_size,
            "params_m": s.reference.params_m,
            "gmacs": s.reference.gmacs,
            "published_params_m": s.reference.published_params_m,
            "published_gmacs": s.reference.published_gmacs,
            "reference_source": s.reference.source,
            "timm_name": s.timm_name,
        }
        for s in specs
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("model", "family", "input", "params (M)", "GMACs", "timm oracle")
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            str(r["input_size"]),
            f"{r['params_m']:.3f}",
            f"{r['gmacs']:.3f}",
            r["timm_name"] or "-",
        )
    stdout.print(table)
