"""Latency tables per family: our deployed ONNX against the multi-branch original (and timm's own export).

A short script over the library, the calls ``deployforge bench`` makes: ``deployforge.workspace`` exports
each model into a scratch directory (``deployforge.peers.prepare_timm_peer`` with timm's weights for
``--vs-timm``), ``deployforge.bench.bench_export`` and ``deployforge.peers.bench_timm_peer`` time the pairs
interleaved (the protocol of docs/design.md, "Latency protocol"); this script only writes the rows as
``OUT/bench_<family>.csv`` and ``OUT/bench_<family>.md`` with a verdict per target.

Only ratios of medians measured interleaved are meaningful on a shared machine; absolute times are context.

Usage:
    python benchmarks/bench_table.py [--models fastvit_t8,...] [--family fastvit] [--threads 1,2]
        [--runs 50] [--min-time-s 5] [--warmup-s 1] [--out benchmarks/results] [--vs-timm]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import os
import platform
import sys
import tempfile
from pathlib import Path

from deployforge.bench import BenchRow, available_cores, bench_export
from deployforge.errors import DeployforgeError
from deployforge.manifest import tool_versions
from deployforge.options import Against, ExportSettings, Target, TimingProtocol, parse_counts
from deployforge.peers import bench_timm_peer, prepare_timm_peer
from deployforge.registry import get_spec, list_models
from deployforge.workspace import Scratch, has_onnx_pair, resolve_model_dirs

# Targets are ratios of medians (baseline p50 / ours p50), never absolute times; None = every model/thread.
TARGETS = {
    (Against.MULTI_BRANCH.value, "fastvit_t8", 2): 1.2,  # reparameterized ≥ 1.2× faster than multi-branch
    (Against.TIMM.value, None, None): 1.0,  # at least as fast as timm's own reparameterized export
}
COLUMNS = {
    "model": lambda r: r.model,
    "threads": lambda r: r.pair.threads,
    "baseline": lambda r: r.against.value,
    "baseline p50 ms": lambda r: f"{r.pair.baseline.p50_ms:.2f}",
    "ours p50 ms": lambda r: f"{r.pair.deployed.p50_ms:.2f}",
    "speedup": lambda r: f"{r.pair.speedup:.3f}",
    "95% CI": lambda r: f"[{r.pair.speedup_ci[0]:.3f}, {r.pair.speedup_ci[1]:.3f}]",
    "params M (deployed ONNX)": lambda r: f"{r.size.params_onnx / 1e6:.3f}",
    "GMACs": lambda r: f"{r.size.macs_onnx / 1e9:.3f}",
    "ours GFLOP/s": lambda r: f"{r.pair.deployed.gflops:.1f}",
    "rel-L2 vs baseline": lambda r: "" if r.rel_l2 is None else f"{r.rel_l2:.1e}",
}


def target_of(row: BenchRow) -> float | None:
    """The speedup target a row is judged against, if any."""
    for key in ((row.against.value, row.model, row.pair.threads), (row.against.value, None, None)):
        if key in TARGETS:
            return TARGETS[key]
    return None


def verdict(row: BenchRow) -> str | None:
    """Ratio-only verdict of a row against its target, read from the bootstrap interval."""
    target = target_of(row)
    if target is None:
        return None
    low, high = row.pair.speedup_ci
    state = "met" if low >= target else "within noise (CI straddles it)" if high >= target else "missed"
    return (
        f"{row.model} @ {row.pair.threads} thread(s), ours vs {row.against.value}: {row.pair.speedup:.3f} "
        f"[{low:.3f}, {high:.3f}], target ≥ {target:g}× → {state}"
    )


def machine_line() -> str:
    """Cores, CPU and tool versions, for the table header."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor() or "unknown CPU"
    versions = tool_versions()
    tools = ", ".join(f"{t} {versions[t]}" for t in ("onnxruntime", "torch", "timm"))
    return f"{available_cores()} cores available ({os.cpu_count()} logical), {cpu}; {tools}"


def write_table(family: str, rows: list[BenchRow], out: Path, protocol: TimingProtocol) -> list[Path]:
    """Write ``bench_<family>.csv`` and ``.md``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"bench_{family}.csv", out / f"bench_{family}.md"
    cells = [{name: str(cell(row)) for name, cell in COLUMNS.items()} for row in rows]
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(cells)
    lines = [
        f"# Latency: {family}, onnxruntime CPU",
        "",
        f"Machine: {machine_line()}. Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}.",
        "",
        f'Protocol: docs/design.md "Latency protocol", batch {protocol.batch}, warm-up ≥ 10 runs and '
        f"≥ {protocol.warmup_s:g} s, then ≥ {protocol.runs} runs and ≥ {protocol.min_time_s:g} s, the two graphs of "
        "a row timed interleaved in one process. speedup = baseline p50 / ours p50 (above 1: ours is faster), "
        "with the bootstrap 95 % interval of the ratio of medians. `multi-branch` = our train-time graph; "
        "`timm` = `timm.utils.reparameterize_model` + `torch.onnx.export` of timm's model with the same weights. "
        "Read the ratios, not the milliseconds.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if name in ("model", "baseline") else "---:" for name in COLUMNS) + "|",
        *("| " + " | ".join(row.values()) + " |" for row in cells),
    ]
    verdicts = [v for v in map(verdict, rows) if v]
    warnings = sorted({r.pair.warning for r in rows if r.pair.warning})
    lines += ["", "Targets (ratios only):", "", *(f"- {v}" for v in verdicts)] if verdicts else []
    lines += ["", "Notes:", "", *(f"- {w}" for w in warnings)] if warnings else []
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def main(argv: list[str] | None = None) -> int:
    """Benchmark, write the tables, print their paths; exit 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated registry names (default: every model of --family)")
    parser.add_argument("--family", default="fastvit", help="family benchmarked when --models is not given")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--runs", type=int, default=TimingProtocol.runs, help="minimum timed runs per model")
    parser.add_argument("--min-time-s", type=float, default=TimingProtocol.min_time_s, help="minimum timing seconds")
    parser.add_argument("--warmup-s", type=float, default=TimingProtocol.warmup_s, help="minimum warm-up seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory for CSV/markdown")
    parser.add_argument("--vs-timm", action="store_true", help="also time ours against timm's own export")
    args = parser.parse_args(argv)
    try:
        specs = [get_spec(n.strip()) for n in args.models.split(",")] if args.models else list_models(args.family)
        base = TimingProtocol(runs=args.runs, warmup_s=args.warmup_s, min_time_s=args.min_time_s)
        protocols = [dataclasses.replace(base, threads=n) for n in parse_counts(args.threads, "threads", "threads")]
        tables: dict[str, list[BenchRow]] = {}
        with tempfile.TemporaryDirectory(prefix="bench_table.") as scratch:
            needs_onnx = Scratch(Path(scratch), ExportSettings(target=Target.ONNX), has_onnx_pair)
            for spec in specs:
                print(f"{spec.name}: exporting and timing", file=sys.stderr, flush=True)
                rows = tables.setdefault(spec.family, [])
                if args.vs_timm and spec.timm_name:
                    # one export of timm's weights serves both comparisons
                    peer = prepare_timm_peer(spec, Path(scratch) / spec.name)
                    rows += bench_export(peer.ours, protocols) + bench_timm_peer(peer, protocols)
                else:
                    (directory,) = resolve_model_dirs([spec.name], Path(scratch) / "none", needs_onnx)
                    rows += bench_export(directory, protocols)
                # rewritten after every model, so an interrupted run keeps what it measured
                written = [p for family, r in tables.items() for p in write_table(family, r, args.out, base)]
    except DeployforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
