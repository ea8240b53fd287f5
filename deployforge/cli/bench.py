"""``deployforge bench``: onnxruntime CPU latency of our deployed ONNX against its baselines, and the GEMM peak."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deployforge.options import (
    PEAK_GEMM_SIZE,
    Against,
    TimingProtocol,
    names,
    parse_counts,
    parse_names,
)

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
            help=f"Baseline: {names(Against)} (timm: timm's reparameterized model exported through timm's own "
            "onnx_export with the TorchScript exporter and with the dynamo exporter, and our multi-branch "
            "original, all of the same weights and timed interleaved with ours; takes model names and exports "
            "everything into a scratch directory, not --out).",
        ),
    ] = Against.MULTI_BRANCH.value,
    runs: Annotated[int, typer.Option(help="Minimum timed runs per model (≥ 1).")] = _DEFAULT.runs,
    warmup_s: Annotated[float, typer.Option(help="Minimum warm-up seconds per model (≥ 0).")] = _DEFAULT.warmup_s,
    min_time_s: Annotated[float, typer.Option(help="Minimum timed seconds per run (≥ 0).")] = _DEFAULT.min_time_s,
    peak: Annotated[
        bool,
        typer.Option(
            "--peak",
            help=f"Measure the machine's FP32 GEMM peak (one {PEAK_GEMM_SIZE}² MatMul in onnxruntime, same session "
            "options) at each thread count and report GFLOP/s as a share of it. With no model named and no "
            "export under --out, only the peak is measured. --json then prints {peak: [...], rows: [...]}.",
        ),
    ] = False,
    runtimes: Annotated[
        str | None,
        typer.Option(
            help="Time the artifacts of these runtimes side by side instead, interleaved in one process: a "
            "comma-separated list of onnxruntime, executorch, litert, ncnn (a model name is exported with every "
            "target they need). Reports p50/p90, GFLOP/s and each runtime's latency over onnxruntime's with a 95 % "
            "interval. x86 latencies rank runtimes on this CPU; they are not phone latencies.",
        ),
    ] = None,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="With --runtimes: also run each runtime's own profiler where it has one (ExecuTorch's ETDump) and "
            "list where the time goes by op kind.",
        ),
    ] = False,
    out: Annotated[Path, typer.Option(help="Output root written by export.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")] = False,
) -> None:
    """Time our deployed ONNX against baselines, interleaved in one process (onnxruntime, CPU).

    The baseline is the multi-branch original by default. Every baseline is first checked to compute what
    ours computes (rel-L2 ≤ 1e-5; exit 1 otherwise). Reports p50/p90/p99, the ratio of medians (baseline /
    ours) with a bootstrap 95 % interval, params, MACs and GFLOP/s.
    """
    base = TimingProtocol(runs=runs, warmup_s=warmup_s, min_time_s=min_time_s)
    counts = parse_counts(threads, "threads", "thread count")
    quiet_converters()
    from deployforge import api

    with progress_status(not as_json) as progress:
        report = api.bench(
            targets or [],
            threads=counts,
            against=against,
            protocol=base,
            peak=peak,
            runtimes=parse_names(runtimes, "runtimes") if runtimes is not None else (),
            profile=profile,
            out=out,
            progress=progress,
            notify=lambda line: stderr.print(line, highlight=False, soft_wrap=True),
        )
    if report.runtimes is not None:
        _print_runtimes(report.runtimes, as_json)
        return
    rows, peaks = report.rows, report.peaks
    if as_json:
        results = [r.as_dict() for r in rows]
        print_json({"peak": [p.as_dict() for p in peaks], "rows": results} if peak else results)
        return
    if peaks:
        stdout.print(_peak_table(peaks))
    if rows:
        stdout.print(_latency_table(rows, with_peak=bool(peaks)))
    for model in dict.fromkeys(r.model for r in rows):
        size = next(r.size for r in rows if r.model == model)
        stdout.print(
            f"{model}: {fmt(size.params_onnx and size.params_onnx / 1e6, '.3f')} M params deployed "
            f"({fmt(size.params_onnx_multibranch and size.params_onnx_multibranch / 1e6, '.3f')} M multi-branch), "
            f"{fmt(size.macs_onnx and size.macs_onnx / 1e9, '.3f')} GMACs",
            highlight=False,
        )


def _peak_table(peaks) -> Table:
    table = Table(title="FP32 GEMM peak, onnxruntime MatMul", title_justify="left")
    for column in ("thr", "size", "p50 ms", "GFLOP/s"):
        table.add_column(column, justify="right", no_wrap=True)
    for peak in peaks:
        table.add_row(str(peak.threads), f"{peak.size}²", fmt(peak.stats.p50_ms, ".2f"), fmt(peak.gflops, ".1f"))
    return table


def _latency_table(rows, with_peak: bool) -> Table:
    """Per model and thread count: our deployed graph, then each baseline of the same run with its speed-up."""
    table = Table(
        title="onnxruntime CPU latency (ms), timed interleaved; speed-up = baseline p50 / ours p50",
        title_justify="left",
    )
    columns = ["model", "thr", "graph", "p50", "p90", "p99", "GFLOP/s"]
    columns += ["% peak"] if with_peak else []
    columns += ["speed-up [95% CI]", "rel-L2"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "graph") else "right", no_wrap=True)

    def cells(stats) -> list[str]:
        line = [fmt(stats.p50_ms, ".2f"), fmt(stats.p90_ms, ".2f"), fmt(stats.p99_ms, ".2f"), fmt(stats.gflops, ".1f")]
        return line + ([fmt(stats.peak_fraction and 100 * stats.peak_fraction, ".1f")] if with_peak else [])

    deployed = None
    for row in rows:
        pair = row.pair
        if pair.deployed is not deployed:  # a new run: its deployed graph first
            deployed = pair.deployed
            table.add_row(row.model, str(pair.threads), "ours (deployed)", *cells(deployed), "", "")
        low, high = pair.speedup_ci
        table.add_row(
            "",
            "",
            row.against.value,
            *cells(pair.baseline),
            f"{pair.speedup:.2f}× [{low:.2f}, {high:.2f}]",
            fmt(row.rel_l2, ".1e"),
        )
    return table


def _print_runtimes(report, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "disclaimer": report.disclaimer,
                "rows": [row.as_dict() for row in report.rows],
                "findings": report.findings,
            }
        )
        return
    stdout.print(_runtime_table(report.rows))
    for line in report.findings:
        stdout.print(f"slow path: {line}", highlight=False, soft_wrap=True)
    stdout.print(f"note: {report.disclaimer}", highlight=False, soft_wrap=True)


def _runtime_table(rows) -> Table:
    """Per model and thread count: each runtime's latency and its ratio to onnxruntime's, from one interleaved run."""
    table = Table(
        title="CPU latency by runtime (ms, batch 1), timed interleaved; ratio = runtime p50 / onnxruntime p50",
        title_justify="left",
    )
    for column in ("model", "thr", "runtime", "p50", "p90", "GFLOP/s", "ratio [95% CI]", "rel-L2 vs ORT"):
        table.add_column(column, justify="left" if column in ("model", "runtime") else "right", no_wrap=True)
    previous = None
    for row in rows:
        run = (row.model, row.stats.threads)
        ratio = ""
        if row.ratio is not None:
            low, high = row.ratio_ci
            ratio = f"{row.ratio:.2f}× [{low:.2f}, {high:.2f}]"
        table.add_row(
            row.model if run != previous else "",
            str(row.stats.threads) if run != previous else "",
            row.runtime,
            fmt(row.stats.p50_ms, ".2f"),
            fmt(row.stats.p90_ms, ".2f"),
            fmt(row.stats.gflops, ".1f"),
            ratio,
            fmt(row.rel_l2, ".1e"),
        )
        previous = run
    return table
