"""What export, verify and bench print: the parity waterfall, stage notes, sizes, JSON views."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter
from rich.markup import escape
from rich.table import Table

from deployforge.measure import SizeReport
from deployforge.report import CoreMLDetails, OnnxDetails, Report, RuntimeDetails, StageRecord

from .common import fmt

if TYPE_CHECKING:  # deployforge.locate imports torch and onnx; render is imported by commands that may not
    from deployforge.locate import LocateReport, Location

_ROWS = TypeAdapter(list[StageRecord])
_SIZE = TypeAdapter(SizeReport)


def waterfall_table(report: Report, title: str) -> Table:
    """Render a report's stages as rows of rel-L2 / max-abs / cosine / top-1 and tolerance."""
    table = Table(title=title, title_justify="left")
    for column in ("stage", "rel-L2", "max abs", "cosine", "top-1", "tol", "ok"):
        table.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    for row in report.stages:
        p = row.parity
        if p is None:
            table.add_row(row.stage, "-", "-", "-", "-", "-", "[red]✗[/]" if row.error else "spec ✓")
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


def _notes(row: StageRecord) -> dict[str, Any]:
    shown = {f.name: getattr(row.details, f.name) for f in dataclasses.fields(row.details)}
    shown.pop("kind")
    if isinstance(row.details, CoreMLDetails):
        shown.pop("package")
    if isinstance(row.details, RuntimeDetails):
        shown.pop("target")
        shown.pop("rewrites")
        facts, artifact = shown.pop("facts"), shown.pop("artifact")
        shown["input_shape"] = "x".join(map(str, row.details.input_shape))
        if row.details.rewrites:
            shown["rewrites"] = ", ".join(row.details.rewrites)
        shown.update(facts)
        if artifact is not None:
            shown["size"] = f"{artifact.size_bytes / 1e6:.1f} MB"
    graph = shown.pop("runtime_graph", None)
    if graph is not None:
        shown["onnxruntime"] = f"{graph.nodes} nodes, {sum(graph.fused.values())} fused, {graph.reorders} reorders"
    for name in ("foreign_merged", "bns_folded_after"):  # only models from outside the registry have any
        if shown.get(name) == 0:
            shown.pop(name)
    shown["file"], shown["error"] = row.file, row.error
    return {k: getattr(v, "value", v) for k, v in shown.items() if v not in (None, "")}


def stage_notes(report: Report) -> list[str]:
    """One line per stage: what it changed (counts, capture method, converter notes, errors) and its wall time."""
    lines = []
    for row in report.stages:
        notes = [f"{k.replace('_', ' ')} {v}" for k, v in _notes(row).items()]
        if row.seconds:
            notes.append(f"{row.seconds:.2f} s")
        if notes:
            lines.append(f"  {row.stage}: " + ", ".join(notes))
    return lines


def runtime_warnings(report: Report) -> list[str]:
    """One line per pattern onnxruntime could not fuse in a deployed graph, naming the file."""
    return [
        f"{row.file}: {line}"
        for row in report.stages
        if isinstance(row.details, OnnxDetails) and row.details.runtime_graph is not None
        for line in row.details.runtime_graph.warnings()
    ]


def classes_line(report: Report) -> str | None:
    """The class count and where it comes from, when it is not the architecture's ImageNet-1k default."""
    output = report.manifest.output if report.manifest else None
    if output is None or (output.classes == 1000 and output.classes_source == "architecture"):
        return None
    return f"classes: {output.classes} ({output.classes_source})"


def size_line(size: SizeReport) -> str:
    """Params and MACs of an export in one line."""
    return (
        f"params: {size.params_train / 1e6:.3f} M train-time, {size.params_reparameterized / 1e6:.3f} M "
        f"reparameterized, {size.params_deployed / 1e6:.3f} M deployed; "
        f"MACs: {size.macs_deployed / 1e9:.3f} G (torch {size.macs_torch / 1e9:.3f} G)"
    )


def report_json(report: Report) -> dict[str, Any]:
    """The JSON view of an export or verification report."""
    return {
        "model": report.model,
        "ok": report.ok,
        "directory": str(report.directory) if report.directory else None,
        "breaches": report.breaches,
        "stages": _ROWS.dump_python(list(report.stages), mode="json"),
        "notes": report.notes,
    }


def export_json(report: Report) -> dict[str, Any]:
    """The JSON view of an export: the report, sizes and artifact digests."""
    manifest = report.manifest
    return {
        **report_json(report),
        "size": _SIZE.dump_python(manifest.size, mode="json"),
        "artifacts": manifest.artifacts,
    }


def locate_table(location: Location, title: str) -> Table:
    """Render one artifact's layer search: module path, rel-L2, max-abs and verdict, the first departure marked."""
    table = Table(title=title, title_justify="left")
    for column in ("#", "module", "rel-L2", "max abs", "ok"):
        table.add_column(column, justify="left" if column in ("module", "ok") else "right", no_wrap=True)
    first = location.first_departure
    for index, layer in enumerate(location.layers, 1):
        verdict = "[green]✓[/]" if layer.ok else "[red]✗[/]"
        if layer is first:
            verdict += " [bold red]← first departure[/]"
        table.add_row(
            str(index), escape(layer.module or "(logits)"), fmt(layer.rel_l2, ".2e"), fmt(layer.max_abs, ".2e"), verdict
        )
    return table


def locate_verdict(location: Location) -> str:
    """One line per artifact: where it first departs, that nothing departs, or why it was not searched."""
    if location.unavailable is not None:
        return f"{location.file}: [yellow]not searched[/]: {escape(location.unavailable)}"
    if location.error is not None:
        return f"{location.file}: [red]FAILED[/]: {escape(location.error)}"
    first = location.first_departure
    if first is None:
        return (
            f"{location.file}: [green]nothing departs[/] from the original ({len(location.layers)} layers within "
            f"rel-L2 {location.tolerance:g})"
        )
    return (
        f"{location.file}: [red]departs first at {escape(first.module or '(logits)')}[/] "
        f"(rel-L2 {first.rel_l2:.3g} > {location.tolerance:g})"
    )


def locate_json(report: LocateReport) -> dict[str, Any]:
    """The JSON view of a layer search: per artifact, its layers in execution order and the first departure."""
    artifacts = []
    for location in report.locations:
        first = location.first_departure
        artifacts.append(
            {
                "file": location.file,
                "stage": location.stage,
                "tolerance": location.tolerance,
                "first_departure": first.module if first is not None else None,
                "unavailable": location.unavailable,
                "error": location.error,
                "seconds": location.seconds,
                "layers": [dataclasses.asdict(layer) for layer in location.layers],
            }
        )
    return {
        "model": report.model,
        "directory": str(report.directory),
        "departs": bool(report.departures),
        "departures": report.departures,
        "artifacts": artifacts,
    }
