"""Latency table: multi-branch vs reparameterized ONNX (and optionally timm's reparameterized export).

For every model: export with ``deployforge.pipeline.export`` (seeded random weights, published input size)
into a scratch directory, then for every thread count time pairs interleaved in one process with
``deployforge.bench.bench_pair`` (DESIGN section 6) and write ``OUT/bench_<family>.csv`` and
``OUT/bench_<family>.md``.

Only ratios of medians measured interleaved are meaningful on a shared machine; absolute times are
reported for context and never judged.

Usage:
    python benchmarks/bench_table.py [--models fastvit_t8,...] [--family fastvit] [--threads 1,2]
        [--runs 50] [--min-time-s 5] [--out benchmarks/results] [--vs-timm]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from deployforge import bench
from deployforge.errors import DeployforgeError
from deployforge.pipeline import DEFAULT_SEED, export, parity_inputs
from deployforge.registry import ModelSpec, get_spec, list_models

# Targets are ratios of medians (baseline p50 / ours p50), never absolute times.
TARGETS = {
    ("multi-branch", "fastvit_t8", 2): 1.2,  # DESIGN: reparameterized >= 1.2x faster than multi-branch
}
TIMM_TARGET = 1.0  # at least as fast as timm's reparameterized export

COLUMNS = [
    "model",
    "threads",
    "baseline",
    "baseline p50 ms",
    "reparam p50 ms",
    "speedup",
    "95% CI low",
    "95% CI high",
    "params M (deployed ONNX)",
    "GMACs",
    "reparam GFLOP/s",
    "BN nodes (baseline / ours)",
]
EXTRA_CSV_COLUMNS = [
    "family",
    "baseline p90 ms",
    "reparam p90 ms",
    "baseline runs",
    "reparam runs",
    "baseline GMACs",
    "baseline GFLOP/s",
    "baseline BN nodes",
    "ours BN nodes",
    "baseline nodes",
    "ours nodes",
    "parity rel-L2 (baseline vs ours)",
    "warning",
]


@dataclass
class Row:
    """One line of the table: ours (reparameterized) against one baseline at one thread count."""

    model: str
    family: str
    threads: int
    baseline: str
    pair: bench.PairResult
    params_m: float
    gmacs: float
    baseline_gmacs: float | None
    bn_baseline: int
    bn_ours: int
    nodes_baseline: int
    nodes_ours: int
    parity_rel_l2: float | None = None

    def cells(self) -> dict[str, object]:
        p = self.pair
        gflops = p.reparameterized.gflops
        base_gflops = p.multi_branch.gflops
        return {
            "model": self.model,
            "threads": self.threads,
            "baseline": self.baseline,
            "baseline p50 ms": f"{p.multi_branch.p50_ms:.2f}",
            "reparam p50 ms": f"{p.reparameterized.p50_ms:.2f}",
            "speedup": f"{p.speedup:.3f}",
            "95% CI low": f"{p.speedup_ci[0]:.3f}",
            "95% CI high": f"{p.speedup_ci[1]:.3f}",
            "params M (deployed ONNX)": f"{self.params_m:.3f}",
            "GMACs": f"{self.gmacs:.3f}",
            "reparam GFLOP/s": f"{gflops:.1f}" if gflops is not None else "",
            "BN nodes (baseline / ours)": f"{self.bn_baseline} / {self.bn_ours}",
            "family": self.family,
            "baseline p90 ms": f"{p.multi_branch.p90_ms:.2f}",
            "reparam p90 ms": f"{p.reparameterized.p90_ms:.2f}",
            "baseline runs": p.multi_branch.n_runs,
            "reparam runs": p.reparameterized.n_runs,
            "baseline GMACs": f"{self.baseline_gmacs:.3f}" if self.baseline_gmacs is not None else "",
            "baseline GFLOP/s": f"{base_gflops:.1f}" if base_gflops is not None else "",
            "baseline BN nodes": self.bn_baseline,
            "ours BN nodes": self.bn_ours,
            "baseline nodes": self.nodes_baseline,
            "ours nodes": self.nodes_ours,
            "parity rel-L2 (baseline vs ours)": f"{self.parity_rel_l2:.2e}" if self.parity_rel_l2 is not None else "",
            "warning": p.warning or "",
        }


@dataclass
class Table:
    """All rows of one family plus the notes printed under the table."""

    family: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# machine description


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    versions = f"onnxruntime {ort.__version__}, torch {torch.__version__.split('+')[0]}"
    try:
        import timm

        versions += f", timm {timm.__version__}"
    except ImportError:
        pass
    cores = bench.available_cores()
    return f"{cores} cores available ({os.cpu_count()} logical), {cpu_model()}; {versions}"


# ---------------------------------------------------------------------------------------------------------
# exports


def graph_counts(path: Path) -> tuple[int, int]:
    """(BatchNormalization nodes, total nodes) of an ONNX file (external data not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    nodes = model.graph.node
    return sum(n.op_type == "BatchNormalization" for n in nodes), len(nodes)


def export_ours(spec: ModelSpec, scratch: Path, weights: Path | None) -> tuple[Path, Path, dict]:
    """Export ``spec`` to ONNX; return (multi-branch path, reparameterized path, manifest size block)."""
    report = export(spec, to="onnx", out=scratch, weights=weights, input_size=spec.input_size)
    if not report.ok:
        raise DeployforgeError(f"export of {spec.name} breached parity: {'; '.join(report.breaches)}")
    directory = scratch / spec.name
    size = json.loads((directory / "manifest.json").read_text())["size"]
    return directory / f"{spec.name}.multibranch.onnx", directory / f"{spec.name}.onnx", size


def build_timm(spec: ModelSpec, seed: int = DEFAULT_SEED) -> torch.nn.Module:
    """timm's train-time model with seeded random weights, in eval mode."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(spec.timm_name, pretrained=False).eval()


def export_timm(model: torch.nn.Module, input_size: int, path: Path) -> Path:
    """Reparameterize a timm model with timm's own utility and export it (dynamic batch, opset 18)."""
    from timm.utils import reparameterize_model

    deployed = reparameterize_model(model).eval()
    x = torch.randn(1, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        deployed,
        (x,),
        str(path),
        dynamo=True,
        opset_version=18,
        dynamic_shapes=({0: batch},),
        input_names=["image"],
        output_names=["logits"],
        external_data=False,
        verbose=False,
    )
    return path


def rel_l2(a_path: Path, b_path: Path, input_size: int) -> float:
    """Relative L2 distance of the logits of two ONNX files on the pipeline's parity batch (b is reference)."""
    x = parity_inputs(input_size, count=2).numpy()
    outs = []
    for path in (a_path, b_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64))
    return float(np.linalg.norm(outs[0] - outs[1]) / np.linalg.norm(outs[1]))


# ---------------------------------------------------------------------------------------------------------
# output


def verdict(row: Row) -> str | None:
    """Ratio-only verdict against the target for this row, from the bootstrap interval."""
    if row.baseline == "timm-reparam":
        target = TIMM_TARGET
    else:
        target = TARGETS.get((row.baseline, row.model, row.threads))
    if target is None:
        return None
    low, high = row.pair.speedup_ci
    if low >= target:
        state = "met (whole 95% CI at or above target)"
    elif high >= target:
        state = "within noise (95% CI straddles target)"
    else:
        state = "missed (whole 95% CI below target)"
    what = "ours vs timm-reparameterized" if row.baseline == "timm-reparam" else "reparameterized vs multi-branch"
    return (
        f"{row.model} @ {row.threads} thread(s), {what}: speedup {row.pair.speedup:.3f} "
        f"[{low:.3f}, {high:.3f}] vs target ≥ {target:g}× → {state}"
    )


def write_table(table: Table, out: Path, header: str, args: argparse.Namespace) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"bench_{table.family}.csv"
    md_path = out / f"bench_{table.family}.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS + EXTRA_CSV_COLUMNS)
        writer.writeheader()
        for row in table.rows:
            writer.writerow(row.cells())

    lines = [
        f"# Latency: {table.family}, onnxruntime CPU",
        "",
        header,
        "",
        (
            f"Protocol: DESIGN §6 (ORT_ENABLE_ALL, inter-op 1, sequential, spinning off), batch 1, warm-up "
            f"≥ 10 runs and ≥ {args.warmup_s:g} s, then ≥ {args.runs} runs and ≥ {args.min_time_s:g} s per model, "
            "the two models of a row timed interleaved in one process. "
            "speedup = baseline p50 / reparam p50 (above 1: ours is faster); "
            "CI = bootstrap 95 % interval of the ratio of medians. "
            "`multi-branch` = our train-time graph; `timm-reparam` = `timm.utils.reparameterize_model` + "
            "`torch.onnx.export(dynamo=True, opset 18)` of the same timm architecture (and, with --vs-timm, "
            "the same seeded weights). params / GMACs are of our deployed (reparameterized) ONNX. "
            "Other work may share the machine: read the ratios, not the milliseconds."
        ),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("model", "baseline") else "---:" for c in COLUMNS) + "|",
    ]
    for row in table.rows:
        cells = row.cells()
        lines.append("| " + " | ".join(str(cells[c]) for c in COLUMNS) + " |")
    verdicts = [v for v in (verdict(r) for r in table.rows) if v]
    if verdicts:
        lines += ["", "Targets (ratios only):", ""] + [f"- {v}" for v in verdicts]
    warnings = sorted({r.pair.warning for r in table.rows if r.pair.warning})
    if table.notes or warnings:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in [*table.notes, *warnings]]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


# ---------------------------------------------------------------------------------------------------------
# main


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated registry names (default: every model of --family)")
    parser.add_argument("--family", default="fastvit", help="family benchmarked when --models is not given")
    parser.add_argument("--threads", type=_int_list, default=[1, 2], help="comma-separated intra-op thread counts")
    parser.add_argument("--runs", type=int, default=50, help="minimum timed runs per model")
    parser.add_argument("--min-time-s", type=float, default=5.0, help="minimum timing seconds per pair")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="minimum warm-up seconds per model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory for CSV/markdown")
    parser.add_argument(
        "--vs-timm",
        action="store_true",
        help="also time ours against timm's reparameterized ONNX export (models with a timm_name)",
    )
    parser.add_argument("--work-dir", type=Path, help="keep the exported ONNX files here (default: a temp dir)")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[bench_table {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, scratch: Path) -> list[Path]:
    specs = [get_spec(n.strip()) for n in args.models.split(",") if n.strip()] if args.models else None
    if specs is None:
        specs = list_models(args.family)
    header = f"Machine: {machine_line()}. Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}."
    tables: dict[str, Table] = {}
    written: list[Path] = []
    for spec in specs:
        table = tables.setdefault(spec.family, Table(spec.family))
        log(f"{spec.name}: exporting ({spec.input_size}x{spec.input_size})")
        timm_model, weights = None, None
        if args.vs_timm:
            if spec.timm_name is None:
                table.notes.append(f"{spec.name}: no timm counterpart, timm row skipped")
            else:
                # Same seeded weights for both exports, so the two graphs compute the same function.
                timm_model = build_timm(spec)
                weights = scratch / f"{spec.name}.timm-init.pth"
                torch.save(timm_model.state_dict(), weights)
        multi_path, ours_path, size = export_ours(spec, scratch / "ours", weights)
        bn_multi, nodes_multi = graph_counts(multi_path)
        bn_ours, nodes_ours = graph_counts(ours_path)
        params_m = size["params_onnx"] / 1e6
        gmacs = size["macs_onnx"] / 1e9
        timm_path, timm_macs, parity = None, None, None
        if timm_model is not None:
            log(f"{spec.name}: exporting timm {spec.timm_name} (timm.utils.reparameterize_model)")
            timm_path = export_timm(timm_model, spec.input_size, scratch / f"{spec.name}.timm-reparam.onnx")
            from deployforge.measure import onnx_macs

            timm_macs = onnx_macs(onnx.load(str(timm_path)))
            parity = rel_l2(timm_path, ours_path, spec.input_size)
            if parity > 1e-4:
                table.notes.append(f"{spec.name}: timm export and ours disagree (rel-L2 {parity:.2e})")
        for threads in args.threads:
            common = {
                "threads": threads,
                "runs": args.runs,
                "warmup_s": args.warmup_s,
                "min_time_s": args.min_time_s,
                "macs_reparameterized": size["macs_onnx"],
            }
            log(f"{spec.name}: {threads} thread(s), multi-branch vs reparameterized")
            pair = bench.bench_pair(multi_path, ours_path, macs_multi_branch=size["macs_onnx_multibranch"], **common)
            table.rows.append(
                Row(
                    spec.name,
                    spec.family,
                    threads,
                    "multi-branch",
                    pair,
                    params_m,
                    gmacs,
                    size["macs_onnx_multibranch"] / 1e9,
                    bn_multi,
                    bn_ours,
                    nodes_multi,
                    nodes_ours,
                )
            )
            log(f"  speedup {pair.speedup:.3f} [{pair.speedup_ci[0]:.3f}, {pair.speedup_ci[1]:.3f}]")
            if timm_path is not None:
                log(f"{spec.name}: {threads} thread(s), timm-reparameterized vs ours")
                pair = bench.bench_pair(timm_path, ours_path, macs_multi_branch=timm_macs, **common)
                bn_timm, nodes_timm = graph_counts(timm_path)
                table.rows.append(
                    Row(
                        spec.name,
                        spec.family,
                        threads,
                        "timm-reparam",
                        pair,
                        params_m,
                        gmacs,
                        timm_macs / 1e9,
                        bn_timm,
                        bn_ours,
                        nodes_timm,
                        nodes_ours,
                        parity,
                    )
                )
                log(f"  speedup {pair.speedup:.3f} [{pair.speedup_ci[0]:.3f}, {pair.speedup_ci[1]:.3f}]")
            # rewrite after every pair so an interrupted run still leaves the rows measured so far
            written = [p for t in tables.values() for p in write_table(t, args.out, header, args)]
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.work_dir is not None:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            written = run(args, args.work_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="bench_table.") as scratch:
                written = run(args, Path(scratch))
    except DeployforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
