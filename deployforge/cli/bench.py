"""``deployforge bench``: onnxruntime CPU latency of our deployed ONNX against a baseline."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deployforge.errors import InvalidSetting
from deployforge.options import Against, ExportSettings, Target, TimingProtocol, choose, names, parse_counts

from .common import DEFAULT_OUT, fmt, handles_errors, print_json, progress_status, quiet_converters, stderr, stdout

_DEFAULT = TimingProtocol()


@handles_errors
def bench_command(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="Model names (exported to a scratch dir if not under --out) or export directories."),
    ] = None,
    threads: Annotated[str, typer.Option(help="Intra-op threads (≥ 1), one or several: 4 or 1,2.")] = "1",
    against: Annotated[
        str,
        typer.Option(
            help=f"Baseline: {names(Against)} (timm: timm's own reparameterized export of the same weights; "
            "takes model names and exports both into a scratch directory, not --out).",
        ),
    ] = Against.MULTI_BRANCH.value,
    runs: Annotated[int, typer.Option(help="Minimum timed runs per model (≥ 1).")] = _DEFAULT.runs,
    warmup_s: Annotated[float, typer.Option(help="Minimum warm-up seconds per model (≥ 0).")] = _DEFAULT.warmup_s,
    min_time_s: Annotated[float, typer.Option(help="Minimum timed seconds per pair (≥ 0).")] = _DEFAULT.min_time_s,
    out: Annotated[Path, typer.Option(help="Output root written by export.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")] = False,
) -> None:
    """Time our deployed ONNX against a baseline, interleaved in one process (onnxruntime, CPU).

    The baseline is the multi-branch original by default. Reports p50/p90/p99, the ratio of medians with a
    bootstrap 95 % interval, params, MACs and GFLOP/s.
    """
    base = TimingProtocol(runs=runs, warmup_s=warmup_s, min_time_s=min_time_s)
    protocols = [dataclasses.replace(base, threads=n) for n in parse_counts(threads, "threads", "thread count")]
    baseline = choose(Against, against, "against", "baseline")
    if baseline is Against.TIMM and (not targets or any(Path(t).is_dir() for t in targets)):
        raise InvalidSetting("against", "timm is benched on model names (its weights are drawn anew); name models")
    quiet_converters()
    from deployforge import bench

    for protocol in protocols:
        warning = bench.thread_warning(protocol.threads)
        if warning:
            stderr.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="deployforge-bench-") as scratch:
        with progress_status(not as_json) as progress:
            if baseline is Against.TIMM:
                rows = _against_timm(targets, Path(scratch), protocols, progress)
            else:
                rows = _against_multi_branch(targets or [], out, Path(scratch), protocols, progress)
    if as_json:
        print_json([r.as_dict() for r in rows])
        return
    stdout.print(_latency_table(rows))
    for model in dict.fromkeys(r.model for r in rows):
        size = next(r.size for r in rows if r.model == model)
        stdout.print(
            f"{model}: {fmt(size.params_onnx and size.params_onnx / 1e6, '.3f')} M params deployed "
            f"({fmt(size.params_onnx_multibranch and size.params_onnx_multibranch / 1e6, '.3f')} M multi-branch), "
            f"{fmt(size.macs_onnx and size.macs_onnx / 1e9, '.3f')} GMACs",
            highlight=False,
        )


def _against_multi_branch(targets: list[str], out: Path, scratch: Path, protocols, progress) -> list:
    from deployforge.bench import bench_export
    from deployforge.workspace import Scratch, has_onnx_pair, resolve_model_dirs

    needs = Scratch(scratch, ExportSettings(target=Target.ONNX), has_onnx_pair)
    dirs = resolve_model_dirs(
        targets,
        out,
        needs,
        progress,
        notify=lambda line: stderr.print(f"note: {line}", highlight=False, soft_wrap=True),
    )
    return [row for directory in dirs for row in bench_export(directory, protocols, progress)]


def _against_timm(targets: list[str], scratch: Path, protocols, progress) -> list:
    from deployforge.peers import bench_timm_peer, prepare_timm_peer
    from deployforge.registry import get_spec

    specs = [get_spec(name) for name in targets]
    peers = [prepare_timm_peer(spec, scratch / spec.name, progress=progress) for spec in specs]
    return [row for peer in peers for row in bench_timm_peer(peer, protocols, progress)]


def _latency_table(rows) -> Table:
    table = Table(title="onnxruntime CPU latency (ms), timed interleaved", title_justify="left")
    for column in ("model", "thr", "graph", "p50", "p90", "p99", "GFLOP/s", "speed-up [95% CI]"):
        table.add_column(column, justify="left" if column in ("model", "graph") else "right", no_wrap=True)
    for row in rows:
        pair = row.pair
        low, high = pair.speedup_ci
        for graph, stats in ((row.against.value, pair.baseline), ("deployed", pair.deployed)):
            first = stats is pair.baseline
            table.add_row(
                row.model if first else "",
                str(pair.threads) if first else "",
                graph,
                fmt(stats.p50_ms, ".2f"),
                fmt(stats.p90_ms, ".2f"),
                fmt(stats.p99_ms, ".2f"),
                fmt(stats.gflops, ".1f"),
                "" if first else f"{pair.speedup:.2f}× [{low:.2f}, {high:.2f}]",
            )
    return table
