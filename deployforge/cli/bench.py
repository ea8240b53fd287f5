"""``deployforge bench``: onnxruntime CPU latency of the multi-branch vs the reparameterized ONNX."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deployforge.errors import DeployforgeError

from .common import (
    DEFAULT_OUT,
    fmt,
    handles_errors,
    parse_threads,
    print_json,
    progress_status,
    quiet_converters,
    stderr,
    stdout,
)


def _onnx_pair(directory: Path) -> tuple[dict, Path, Path]:
    from deployforge.manifest import read_manifest

    card = read_manifest(directory)
    name = card["model"]
    multi, merged = directory / f"{name}.multibranch.onnx", directory / f"{name}.onnx"
    if not (multi.is_file() and merged.is_file()):
        raise DeployforgeError(
            f"{directory} has no ONNX pair ({multi.name}, {merged.name}); run `deployforge export {name} --to onnx`"
        )
    return card, multi, merged


def _targets(targets: list[str], out: Path, scratch: Path, progress) -> list[Path]:
    from deployforge.verify import find_model_dirs

    if not targets:
        dirs = [d for d in find_model_dirs(out) if any(d.glob("*.multibranch.onnx"))]
        if not dirs:
            raise DeployforgeError(
                f"no ONNX exports under {out}; run `deployforge export MODEL --to onnx` or name a model"
            )
        return dirs
    dirs = []
    for target in targets:
        if Path(target).is_dir():
            dirs += find_model_dirs(Path(target)) or [Path(target)]
        elif (out / target).is_dir() and any((out / target).glob("*.multibranch.onnx")):
            dirs.append(out / target)
        else:
            from deployforge import pipeline
            from deployforge.registry import get_spec

            spec = get_spec(target)
            report = pipeline.export(spec, to="onnx", out=scratch, progress=progress)
            if not report.ok:
                raise DeployforgeError(f"{target}: export failed parity ({'; '.join(report.breaches)})")
            dirs.append(report.directory)
    return dirs


@handles_errors
def bench_command(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="Model names (exported to a scratch dir if not under --out) or export directories."),
    ] = None,
    threads: Annotated[str, typer.Option(help="Intra-op threads, one or several: 4 or 1,2.")] = "1",
    runs: Annotated[int, typer.Option(help="Minimum timed runs per model.")] = 50,
    warmup_s: Annotated[float, typer.Option(help="Minimum warm-up seconds per model.")] = 1.0,
    min_time_s: Annotated[float, typer.Option(help="Minimum timed seconds per pair.")] = 5.0,
    out: Annotated[Path, typer.Option(help="Output root written by export.")] = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")] = False,
) -> None:
    """Time the multi-branch and reparameterized ONNX interleaved in one process (onnxruntime, CPU).

    Reports p50/p90/p99, the ratio of medians with a bootstrap 95 % interval, params, MACs and GFLOP/s.
    """
    thread_counts = parse_threads(threads)
    if runs < 1 or warmup_s < 0 or min_time_s < 0:
        raise DeployforgeError("--runs must be ≥ 1 and --warmup-s / --min-time-s ≥ 0")
    quiet_converters()
    from deployforge import bench

    for count in thread_counts:
        warning = bench.thread_warning(count)
        if warning:
            stderr.print(f"warning: {warning}", highlight=False)
    results = []
    with tempfile.TemporaryDirectory(prefix="deployforge-bench-") as scratch:
        with progress_status(not as_json) as progress:
            for directory in _targets(targets or [], out, Path(scratch), progress):
                card, multi, merged = _onnx_pair(directory)
                size = card["size"]
                for count in thread_counts:
                    progress(f"{card['model']}: timing at {count} thread(s)")
                    pair = bench.bench_pair(
                        multi,
                        merged,
                        count,
                        runs=runs,
                        warmup_s=warmup_s,
                        min_time_s=min_time_s,
                        macs_multi_branch=size.get("macs_onnx_multibranch"),
                        macs_reparameterized=size.get("macs_onnx"),
                    )
                    results.append(
                        {
                            "model": card["model"],
                            "params": size.get("params_onnx"),
                            "params_multibranch": size.get("params_onnx_multibranch"),
                            "macs": size.get("macs_onnx"),
                            **pair.as_dict(),
                        }
                    )
    if as_json:
        print_json(results)
        return
    table = Table(title="onnxruntime CPU latency (ms), timed interleaved", title_justify="left")
    for column in ("model", "thr", "graph", "p50", "p90", "p99", "GFLOP/s", "speed-up [95% CI]"):
        table.add_column(column, justify="left" if column in ("model", "graph") else "right", no_wrap=True)
    for r in results:
        low, high = r["speedup_ci95"]
        for graph, key in (("multi-branch", "multi_branch"), ("reparam", "reparameterized")):
            stats = r[key]
            table.add_row(
                r["model"] if key == "multi_branch" else "",
                str(r["threads"]) if key == "multi_branch" else "",
                graph,
                fmt(stats["p50_ms"], ".2f"),
                fmt(stats["p90_ms"], ".2f"),
                fmt(stats["p99_ms"], ".2f"),
                fmt(stats.get("gflops"), ".1f"),
                f"{r['speedup']:.2f}× [{low:.2f}, {high:.2f}]" if key == "reparameterized" else "",
            )
    stdout.print(table)
    for model in dict.fromkeys(r["model"] for r in results):
        r = next(x for x in results if x["model"] == model)
        stdout.print(
            f"{model}: {fmt(r['params'] and r['params'] / 1e6, '.3f')} M params deployed "
            f"({fmt(r['params_multibranch'] and r['params_multibranch'] / 1e6, '.3f')} M multi-branch), "
            f"{fmt(r['macs'] and r['macs'] / 1e9, '.3f')} GMACs",
            highlight=False,
        )
