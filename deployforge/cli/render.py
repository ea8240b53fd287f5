"""Tables shared by export and verify: the parity waterfall."""

from __future__ import annotations

from rich.table import Table

from .common import fmt


def waterfall_table(report, title: str) -> Table:
    """Render a report's stages as rows of rel-L2 / max-abs / cosine / top-1 and what each stage did."""
    table = Table(title=title, title_justify="left")
    for column in ("stage", "rel-L2", "max abs", "cosine", "top-1", "tol", "ok"):
        table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    for row in report.stages:
        p = row.parity
        if p is None:
            table.add_row(row.stage, "-", "-", "-", "-", "-", "[red]✗[/]" if "error" in row.details else "spec ✓")
            continue
        table.add_row(
            row.stage,
            fmt(p.rel_l2, ".2e"),
            fmt(p.max_abs, ".2e"),
            fmt(p.cosine, ".7f"),
            fmt(p.top1, ".2f"),
            fmt(p.tolerance, ".0e"),
            "[green]✓[/]" if p.ok else "[red]✗[/]",
        )
    return table


def stage_notes(report) -> list[str]:
    """One line per stage: what it changed (counts, capture path, converter notes)."""
    lines = []
    for row in report.stages:
        shown = {k: v for k, v in row.details.items() if k != "spec" and v not in (None, "")}
        if shown:
            lines.append(f"  {row.stage}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items()))
    return lines
