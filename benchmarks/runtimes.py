"""The mobile runtimes side by side: every family's smallest and largest variant on onnxruntime, ExecuTorch, LiteRT
and ncnn, at 1 and 2 threads, with each artifact's parity against the multi-branch original.

For each model, at its published input size: ``deployforge.export`` to ONNX, ExecuTorch (XNNPACK, partial delegation
accepted), LiteRT and ncnn (stressed, conditioned random weights; every artifact proven by the waterfall), then
``deployforge.bench`` with ``runtimes`` times the four artifacts interleaved in one process, once per thread count,
and runs the runtimes' own profilers (ExecuTorch's ETDump). Ratios are each runtime's median latency over
onnxruntime's from the same run; milliseconds are context only (a shared x86 machine, not a phone). A run resumes:
models already in the CSV are kept (and only profiled if ``runtimes_profile.json`` lacks them).

Usage:
    python benchmarks/runtimes.py [--models fastvit_t8,mobileone_s0] [--threads 1,2] [--runs 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import deployforge
from deployforge.options import TimingProtocol, parse_counts
from deployforge.registry import list_models
from deployforge.runtime_bench import DISCLAIMER, profile_export

RUNTIMES = ("onnxruntime", "executorch", "litert", "ncnn")
TARGETS = "onnx,executorch,litert,ncnn"
STAGE_OF = {"onnxruntime": "onnx", "executorch": "executorch", "litert": "litert", "ncnn": "ncnn"}
FIELDS = ["model", "family", "input", "gmacs", "threads", "runtime", "p50_ms", "p90_ms", "gflops", "ratio"]
FIELDS += ["ratio_low", "ratio_high", "parity_rel_l2"]


def extremes() -> list[str]:
    """Every family's smallest and largest registered variant, by parameters (registration order within a family)."""
    chosen = []
    families: dict[str, list] = {}
    for spec in list_models():
        families.setdefault(spec.family, []).append(spec)
    for specs in families.values():
        ranked = sorted(specs, key=lambda s: s.reference.params_m if s.reference else 0.0)
        chosen += dict.fromkeys([ranked[0].name, ranked[-1].name])
    return chosen


def run_model(name: str, counts: list[int], protocol: TimingProtocol, scratch: Path) -> tuple[list[dict], list[str]]:
    """Export one model to every target, time the four runtimes interleaved, then run their profilers.

    Returns:
        The CSV rows, and the profilers' findings (where each runtime's time goes, by op kind).
    """
    # most families keep a few ops outside XNNPACK (docs/runtimes.md): time them as ExecuTorch would run them
    report = deployforge.export(name, to=TARGETS, out=scratch, allow_partial=True)
    if not report.ok:
        raise SystemExit(f"{name}: export failed: {'; '.join(report.breaches)}")
    parity = {row.stage: row.parity.rel_l2 for row in report.stages if row.parity is not None}
    bench = deployforge.bench(
        report.directory, runtimes=list(RUNTIMES), threads=counts, protocol=protocol, profile=True
    )
    manifest = report.manifest
    rows = []
    for row in bench.runtimes.rows:
        low, high = row.ratio_ci or (None, None)
        rows.append(
            {
                "model": name,
                "family": manifest.family,
                "input": manifest.input.shape[-1],
                "gmacs": manifest.size.macs_onnx / 1e9,
                "threads": row.stats.threads,
                "runtime": row.runtime,
                "p50_ms": row.stats.p50_ms,
                "p90_ms": row.stats.p90_ms,
                "gflops": row.stats.gflops,
                "ratio": row.ratio,
                "ratio_low": low,
                "ratio_high": high,
                "parity_rel_l2": parity.get(STAGE_OF[row.runtime]),
            }
        )
    return rows, list(bench.runtimes.findings)


def profile_model(name: str, scratch: Path) -> list[str]:
    """The profilers' findings alone, for a model timed by an earlier run (ExecuTorch is the one with a profiler)."""
    report = deployforge.export(name, to="executorch", out=scratch, allow_partial=True)
    if not report.ok:
        raise SystemExit(f"{name}: export failed: {'; '.join(report.breaches)}")
    return profile_export(report.directory, RUNTIMES)


def write_markdown(rows: list[dict], findings: dict[str, list[str]], path: Path) -> None:
    """The latency table (p50 and ratio to onnxruntime per runtime and thread count), the parity table and the
    profilers' findings per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    counts = sorted({int(r["threads"]) for r in rows})
    at = {(r["model"], int(r["threads"]), r["runtime"]): r for r in rows}
    lines = [
        "# Runtimes side by side",
        "",
        f"`python benchmarks/runtimes.py` — {DISCLAIMER}. Each cell: p50 in ms, and the runtime's median latency over "
        "onnxruntime's from the same interleaved run with its bootstrap 95 % interval (below 1: faster than "
        "onnxruntime). Batch 1, FP32, published input size, random conditioned weights.",
        "",
    ]
    for threads in counts:
        lines += [f"## {threads} thread(s)", ""]
        lines.append("| model | GMACs | " + " | ".join(RUNTIMES) + " |")
        lines.append("|---|---|" + "---|" * len(RUNTIMES))
        for model in models:
            cells = []
            for runtime in RUNTIMES:
                row = at.get((model, threads, runtime))
                if row is None:
                    cells.append("-")
                elif runtime == "onnxruntime":
                    cells.append(f"{float(row['p50_ms']):.2f} ms ({float(row['gflops']):.1f} GFLOP/s)")
                else:
                    cells.append(
                        f"{float(row['p50_ms']):.2f} ms, {float(row['ratio']):.2f}× "
                        f"[{float(row['ratio_low']):.2f}, {float(row['ratio_high']):.2f}]"
                    )
            gmacs = float(at[(model, threads, RUNTIMES[0])]["gmacs"])
            lines.append(f"| {model} | {gmacs:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Parity against the multi-branch original (rel-L2, FP32)", ""]
    lines.append("| model | input | " + " | ".join(RUNTIMES) + " |")
    lines.append("|---|---|" + "---|" * len(RUNTIMES))
    for model in models:
        row = at[(model, counts[0], RUNTIMES[0])]
        cells = [f"{float(at[(model, counts[0], r)]['parity_rel_l2']):.2e}" for r in RUNTIMES]
        lines.append(f"| {model} | {row['input']} | " + " | ".join(cells) + " |")
    lines += ["", "## Where the time goes, by the runtimes' own profilers (1 thread)", ""]
    lines += [f"- {line}" for model in models for line in findings.get(model, [])]
    path.write_text("\n".join(lines) + "\n")


def write_plot(rows: list[dict], path: Path) -> None:
    """Ratio to onnxruntime per model and runtime, one panel per thread count: points with 95 % intervals.

    Points, not bars: on a log axis a bar's length depends on where the axis happens to start.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    counts = sorted({int(r["threads"]) for r in rows})
    others = [r for r in RUNTIMES if r != "onnxruntime"]
    figure, axes = plt.subplots(1, len(counts), figsize=(7 * len(counts), 0.45 * len(models) + 2), squeeze=False)
    for axis, threads in zip(axes[0], counts, strict=True):
        for index, runtime in enumerate(others):
            picked = [
                next(r for r in rows if r["model"] == m and int(r["threads"]) == threads and r["runtime"] == runtime)
                for m in models
            ]
            ratio = [float(r["ratio"]) for r in picked]
            low = [float(r["ratio"]) - float(r["ratio_low"]) for r in picked]
            high = [float(r["ratio_high"]) - float(r["ratio"]) for r in picked]
            positions = [i + (index - 1) * 0.22 for i in range(len(models))]
            axis.errorbar(ratio, positions, xerr=[low, high], fmt="o", markersize=5, capsize=3, label=runtime)
        axis.axvline(1.0, color="black", linewidth=0.8, label="onnxruntime")
        axis.grid(axis="x", which="both", alpha=0.3)
        axis.set_xscale("log")
        axis.set_yticks(range(len(models)), models)
        axis.invert_yaxis()
        axis.set_xlabel("latency / onnxruntime latency (log; < 1 is faster)")
        axis.set_title(f"{threads} thread(s), batch 1, x86 (not a phone)")
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}×"))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: every family's extremes)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--min-time-s", type=float, default=2.0)
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else extremes()
    counts = parse_counts(args.threads, "threads", "thread count")
    protocol = TimingProtocol(runs=args.runs, min_time_s=args.min_time_s, warmup_s=args.warmup_s)
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "runtimes.csv"
    profiles = args.out / "runtimes_profile.json"
    rows = list(csv.DictReader(table.open())) if table.exists() else []
    findings: dict[str, list[str]] = json.loads(profiles.read_text()) if profiles.exists() else {}
    done = {r["model"] for r in rows}
    registry_order = [spec.name for spec in list_models()]
    for name in models:
        if name in done and name in findings:
            continue
        with tempfile.TemporaryDirectory(prefix="deployforge-runtimes-") as scratch:
            if name in done:
                print(f"{name}: profile", flush=True)
                findings[name] = profile_model(name, Path(scratch))
            else:
                print(f"{name}: export, time and profile", flush=True)
                new_rows, findings[name] = run_model(name, counts, protocol, Path(scratch))
                rows += new_rows
        rows.sort(key=lambda row: registry_order.index(row["model"]))  # stable: a model's rows keep their order
        with table.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        profiles.write_text(json.dumps(findings, indent=1) + "\n")
        write_markdown(rows, findings, args.out / "runtimes.md")
        write_plot(rows, args.out / "runtimes.png")


if __name__ == "__main__":
    main()
