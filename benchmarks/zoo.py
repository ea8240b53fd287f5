"""The zoo table and plots: every registered model, ours against timm's own exports and our multi-branch original.

A thin layer over the library calls ``deployforge bench --against timm --peak`` makes: per model,
``deployforge.peers.prepare_timm_peer`` draws timm's model with seeded, stressed random weights, exports ours
from that state dict and timm's reparameterized model through timm's own ``onnx_export`` (TorchScript, timm's
default, and dynamo), and checks that every baseline computes what ours computes (rel-L2 ≤ 1e-5 on the parity
batch); ``deployforge.peers.bench_timm_peer`` then times all four graphs interleaved in one process, once per
thread count (docs/design.md, "Latency protocol"). ``deployforge.benchmark.measure_peak`` measures the FP32 GEMM
peak once per thread count at the start of the run. This script only writes the rows:

    OUT/zoo.csv                 one row per model and thread count, every figure at full precision
    OUT/zoo.md                  the table, the peak, the targets with their verdicts
    OUT/zoo_latency_vs_macs.png ours p50 against MACs, one marker per family, one panel per thread count
    OUT/zoo_speedup_vs_peer.png speed-up over timm's TorchScript export per model, 95 % intervals as error bars

Outputs are rewritten after every model, and a run resumes: models already in ``OUT/zoo.csv`` at every asked
thread count (and the same opset) are kept, not timed again, unless ``--remeasure`` is given.

Usage:
    python benchmarks/zoo.py [--models a,b] [--threads 1,2] [--runs 50] [--min-time-s 5] [--warmup-s 1]
        [--opset 18] [--out benchmarks/results] [--remeasure]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import logging
import math
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from deployforge.benchmark import BenchRow, Peak, available_cores, bench_export, measure_peak, thread_warning
from deployforge.errors import DeployforgeError
from deployforge.manifest import tool_versions
from deployforge.options import DEFAULT_OPSET, Baseline, ExportSettings, Target, TimingProtocol, parse_counts
from deployforge.peers import bench_timm_peer, prepare_timm_peer
from deployforge.registry import ModelSpec, get_spec, list_models
from deployforge.workspace import Scratch, has_onnx_pair, resolve_model_dirs

BENCH_EXTRA = "pip install 'deployforge[bench]'"
CSV_NAME, MD_NAME = "zoo.csv", "zoo.md"
LATENCY_PNG, SPEEDUP_PNG = "zoo_latency_vs_macs.png", "zoo_speedup_vs_peer.png"
PEER = Baseline.TIMM  # the faithful peer: timm's export utility with its default (TorchScript) exporter
PREFIX = {Baseline.TIMM: "timm", Baseline.TIMM_DYNAMO: "timm_dynamo", Baseline.MULTI_BRANCH: "multibranch"}
LABEL = {
    Baseline.TIMM: "vs timm (TorchScript)",
    Baseline.TIMM_DYNAMO: "vs timm (dynamo)",
    Baseline.MULTI_BRANCH: "reparam vs multi-branch",
}


@dataclasses.dataclass(frozen=True)
class Ratio:
    """One baseline of a run: its p50 and speed-up = baseline p50 / ours p50 with the bootstrap 95 % interval."""

    p50_ms: float
    speedup: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class ZooRow:
    """One model at one thread count: ours and every baseline of the same interleaved run."""

    family: str
    model: str
    threads: int
    opset: int
    params_m: float
    gmacs: float
    ours_p50_ms: float
    ours_p90_ms: float
    ours_gflops: float | None
    peak_gflops: float | None
    max_rel_l2: float | None
    runs: int
    measured_utc: str
    ratios: dict[Baseline, Ratio]

    @property
    def peak_pct(self) -> float | None:
        """Ours GFLOP/s as a percentage of the FP32 GEMM peak measured in the same run."""
        if self.ours_gflops is None or not self.peak_gflops:
            return None
        return 100.0 * self.ours_gflops / self.peak_gflops

    @classmethod
    def from_bench(cls, spec: ModelSpec, opset: int, rows: Sequence[BenchRow], when: str) -> ZooRow:
        """The rows of one interleaved run (same model and thread count) as one zoo row."""
        first = rows[0]
        ours = first.pair.deployed
        checked = [r.rel_l2 for r in rows if r.rel_l2 is not None]
        return cls(
            family=spec.family,
            model=spec.name,
            threads=first.pair.threads,
            opset=opset,
            params_m=(first.size.params_onnx or 0) / 1e6,
            gmacs=(first.size.macs_onnx or 0) / 1e9,
            ours_p50_ms=ours.p50_ms,
            ours_p90_ms=ours.p90_ms,
            ours_gflops=ours.gflops,
            peak_gflops=ours.peak_gflops,
            max_rel_l2=max(checked) if checked else None,
            runs=ours.n_runs,
            measured_utc=when,
            ratios={r.against: Ratio(r.pair.baseline.p50_ms, r.pair.speedup, *r.pair.speedup_ci) for r in rows},
        )

    def as_csv(self) -> dict[str, str]:
        """Flat CSV cells, every figure at full precision (empty when absent)."""
        cells = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ratios"}
        cells["ours_peak_pct"] = self.peak_pct
        for baseline, prefix in PREFIX.items():
            ratio = self.ratios.get(baseline)
            for name in ("p50_ms", "speedup", "low", "high"):
                cells[f"{prefix}_{name}"] = None if ratio is None else getattr(ratio, name)
        return {key: "" if value is None else str(value) for key, value in cells.items()}

    @classmethod
    def from_csv(cls, cells: dict[str, str]) -> ZooRow:
        """Read back a row written by :meth:`as_csv`."""

        def number(key: str) -> float | None:
            return float(cells[key]) if cells.get(key) else None

        ratios = {}
        for baseline, prefix in PREFIX.items():
            values = [number(f"{prefix}_{name}") for name in ("p50_ms", "speedup", "low", "high")]
            if all(v is not None for v in values):
                ratios[baseline] = Ratio(*values)
        return cls(
            family=cells["family"],
            model=cells["model"],
            threads=int(cells["threads"]),
            opset=int(cells["opset"]),
            params_m=float(cells["params_m"]),
            gmacs=float(cells["gmacs"]),
            ours_p50_ms=float(cells["ours_p50_ms"]),
            ours_p90_ms=float(cells["ours_p90_ms"]),
            ours_gflops=number("ours_gflops"),
            peak_gflops=number("peak_gflops"),
            max_rel_l2=number("max_rel_l2"),
            runs=int(cells["runs"]),
            measured_utc=cells["measured_utc"],
            ratios=ratios,
        )


CSV_COLUMNS = [
    *(f.name for f in dataclasses.fields(ZooRow) if f.name != "ratios"),
    "ours_peak_pct",
    *(f"{prefix}_{name}" for prefix in PREFIX.values() for name in ("p50_ms", "speedup", "low", "high")),
]


# --- targets: ratios only, judged from the bootstrap interval -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Goal:
    """A speed-up target: ``speedup ≥ at_least`` with the interval's low end ``≥ low_at_least``.

    Verdict: *met* when both hold, *missed* when the whole interval lies below ``at_least``, else *within
    noise*.
    """

    name: str
    baseline: Baseline
    at_least: float
    low_at_least: float
    applies: Callable[[ZooRow], bool]

    def verdict(self, row: ZooRow) -> str | None:
        """``met``, ``within noise`` or ``missed``; None when the target does not apply or was not measured."""
        ratio = row.ratios.get(self.baseline)
        if ratio is None or not self.applies(row):
            return None
        if ratio.speedup >= self.at_least and ratio.low >= self.low_at_least:
            return "met"
        return "missed" if ratio.high < self.at_least else "within noise"


GOALS = (
    Goal(
        "ours ≤ 1.00× timm's TorchScript export, interval's upper end ≤ 1.03× "
        "(speed-up ≥ 1.00, low end ≥ 1/1.03 = 0.971)",
        PEER,
        1.0,
        1 / 1.03,
        lambda row: True,
    ),
    Goal(
        "FastViT-T8 reparameterized ≥ 1.2× faster than its multi-branch original at 2 threads",
        Baseline.MULTI_BRANCH,
        1.2,
        1.2,
        lambda row: row.model == "fastvit_t8" and row.threads == 2,
    ),
    Goal(
        "where deployforge removes work the peer keeps (folded layer scales, the attention BN: FastViT), "
        "ours ≤ 0.95× the peer (speed-up ≥ 1/0.95 = 1.053, whole interval)",
        PEER,
        1 / 0.95,
        1 / 0.95,
        lambda row: row.family == "fastvit",
    ),
)


# --- reading and writing --------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[ZooRow]:
    """The rows of an earlier run (none when the file is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [ZooRow.from_csv(cells) for cells in csv.DictReader(handle)]


def registry_order(rows: Iterable[ZooRow]) -> list[ZooRow]:
    """Rows in registration order, then by thread count (unregistered names last)."""
    index = {spec.name: i for i, spec in enumerate(list_models())}
    return sorted(rows, key=lambda r: (index.get(r.model, len(index)), r.model, r.threads))


def machine_line() -> str:
    """Cores, CPU and tool versions, for the table header."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor() or "unknown CPU"
    versions = tool_versions()
    tools = ", ".join(f"{t} {versions.get(t, '?')}" for t in ("onnxruntime", "torch", "timm"))
    return f"{available_cores()} cores available ({os.cpu_count()} logical), {cpu}; {tools}"


def _ratio_cell(ratio: Ratio | None) -> str:
    return "" if ratio is None else f"{ratio.speedup:.3f}× [{ratio.low:.3f}, {ratio.high:.3f}]"


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def write_csv(rows: Sequence[ZooRow], path: Path) -> None:
    """Every row, flat, full precision."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(row.as_csv() for row in rows)


def write_markdown(
    rows: Sequence[ZooRow],
    path: Path,
    protocol: TimingProtocol,
    missing: dict[str, str],
    notes: Sequence[str] = (),
) -> None:
    """The table, the peaks, the targets with verdicts, and what was not measured."""
    peaks = {}
    for row in sorted(rows, key=lambda r: r.measured_utc):
        if row.peak_gflops:
            peaks[row.threads] = row.peak_gflops
    dates = sorted({row.measured_utc for row in rows})
    when = f"{dates[0]} to {dates[-1]}" if len(dates) > 1 else (dates[0] if dates else "-")
    header = [
        "family",
        "model",
        "thr",
        "GMACs",
        "params M",
        "ours p50 ms",
        "ours p90 ms",
        "GFLOP/s",
        "% peak",
        *(LABEL[b] for b in PREFIX),
        "max rel-L2",
    ]
    lines = [
        "# The zoo: our deployed ONNX against timm's own exports, onnxruntime CPU",
        "",
        f"Machine: {machine_line()}. Measured (UTC): {when}. Regenerate: `python benchmarks/zoo.py` "
        "(see benchmarks/README.md).",
        "",
        'Protocol: docs/design.md "Latency protocol", batch 1; per model and thread count, ours, timm\'s '
        "TorchScript export, timm's dynamo export and our multi-branch original are timed round-robin in one "
        f"process (warm-up ≥ 10 runs and ≥ {protocol.warmup_s:g} s each, then ≥ {protocol.runs} runs and "
        f"≥ {protocol.min_time_s:g} s). All four carry the same stressed random weights and were checked to "
        "compute the same function first (max rel-L2 column, bound 1e-5). Each ratio cell is the speed-up "
        "baseline p50 / ours p50 (above 1: ours is faster; ours/peer = 1 / speed-up) with the bootstrap 95 % "
        "interval of the ratio of medians. GFLOP/s = 2 · MACs / p50 of ours; % peak against the FP32 GEMM peak "
        "measured in the same run. Read the ratios, not the milliseconds.",
        "",
        "FP32 GEMM peak (onnxruntime MatMul, same session options): "
        + (", ".join(f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in sorted(peaks.items())) or "not measured")
        + ".",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if name in ("family", "model") else "---:" for name in header) + "|",
    ]
    for row in rows:
        cells = [
            row.family,
            row.model,
            str(row.threads),
            f"{row.gmacs:.3f}",
            f"{row.params_m:.3f}",
            f"{row.ours_p50_ms:.2f}",
            f"{row.ours_p90_ms:.2f}",
            _fmt(row.ours_gflops, ".1f"),
            _fmt(row.peak_pct, ".1f"),
            *(_ratio_cell(row.ratios.get(b)) for b in PREFIX),
            _fmt(row.max_rel_l2, ".1e"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets (ratios only)", ""]
    for goal in GOALS:
        judged = [(row, goal.verdict(row)) for row in rows]
        judged = [(row, v) for row, v in judged if v is not None]
        met = [row for row, v in judged if v == "met"]
        lines.append(f"- **{goal.name}**: met by {len(met)} of {len(judged)} row(s).")
        for row, state in judged:
            ratio = row.ratios[goal.baseline]
            lines.append(
                f"  - {row.model} @ {row.threads} thread(s): {ratio.speedup:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]"
                f" → {state}"
            )
    if missing:
        lines += ["", "## Not measured", "", *(f"- {name}: {why}" for name, why in missing.items())]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    path.write_text("\n".join(lines) + "\n")


# --- plots (matplotlib, the `bench` extra) ----------------------------------------------------------------------


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend.

    Raises:
        DeployforgeError: matplotlib is not installed; the message names the extra.
    """
    try:
        import matplotlib
    except ImportError:
        raise DeployforgeError(f"the plots need matplotlib: {BENCH_EXTRA}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = "osD^vP*X"


def plot_latency_vs_macs(rows: Sequence[ZooRow], path: Path) -> Path:
    """Ours p50 against MACs, log-log, one colour and marker per family, one panel per thread count."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    threads = sorted({row.threads for row in rows}) or [1]
    families = sorted({row.family for row in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(6 * len(threads), 4.8), squeeze=False, sharey=True)
    for ax, count in zip(axes[0], threads, strict=True):
        for i, family in enumerate(families):
            points = [row for row in rows if row.threads == count and row.family == family]
            ax.scatter(
                [row.gmacs for row in points],
                [row.ours_p50_ms for row in points],
                marker=MARKERS[i % len(MARKERS)],
                color=f"C{i}",
                label=family,
                s=40,
            )
            for row in points:
                ax.annotate(
                    row.model, (row.gmacs, row.ours_p50_ms), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1, 2 and 5 per decade, not powers of ten
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("GMACs per image (deployed ONNX)")
        ax.set_title(f"{count} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ours p50 latency, ms (onnxruntime CPU)")
    axes[0][0].legend(title="family")
    fig.suptitle("Latency against MACs per family")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speedup(rows: Sequence[ZooRow], path: Path, baseline: Baseline = PEER) -> Path:
    """Speed-up over ``baseline`` per model, one bar per thread count, the 95 % interval as error bars.

    Bars start at 1.0 (level with the baseline): up, ours is faster; down, ours is slower.
    """
    plt = pyplot()
    measured = [row for row in rows if baseline in row.ratios]
    models = list(dict.fromkeys(row.model for row in measured))
    threads = sorted({row.threads for row in measured})
    width = 0.8 / max(1, len(threads))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(models) + 2), 4.8))
    for j, count in enumerate(threads):
        xs, heights, below, above = [], [], [], []
        for i, model in enumerate(models):
            row = next((r for r in measured if r.model == model and r.threads == count), None)
            if row is None:
                continue
            ratio = row.ratios[baseline]
            xs.append(i - 0.4 + width * (j + 0.5))
            heights.append(ratio.speedup - 1.0)
            below.append(max(0.0, ratio.speedup - ratio.low))
            above.append(max(0.0, ratio.high - ratio.speedup))
        ax.bar(
            xs, heights, width, bottom=1.0, yerr=[below, above], capsize=2, color=f"C{j}", label=f"{count} thread(s)"
        )
    ax.axhline(1.0, color="black", linewidth=1)
    ax.axhline(
        1 / 0.95, color="grey", linewidth=1, linestyle="--", label="ours at 0.95× the peer's p50 (FastViT target)"
    )
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"speed-up over {baseline.value} (its p50 / ours p50)")
    ax.set_title(f"Ours against {LABEL[baseline].removeprefix('vs ')}: above 1, ours is faster (95 % CI)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(
    rows: Sequence[ZooRow], out: Path, protocol: TimingProtocol, missing: dict[str, str], notes: Sequence[str]
) -> list[Path]:
    """The CSV, the markdown and both plots, from every row."""
    out.mkdir(parents=True, exist_ok=True)
    rows = registry_order(rows)
    write_csv(rows, out / CSV_NAME)
    write_markdown(rows, out / MD_NAME, protocol, missing, notes)
    plot_latency_vs_macs(rows, out / LATENCY_PNG)
    plot_speedup(rows, out / SPEEDUP_PNG)
    return [out / name for name in (CSV_NAME, MD_NAME, LATENCY_PNG, SPEEDUP_PNG)]


# --- measuring ---------------------------------------------------------------------------------------------------


def measure_model(
    spec: ModelSpec, scratch: Path, protocols: Sequence[TimingProtocol], peaks: Sequence[Peak], opset: int
) -> list[ZooRow]:
    """One model, every thread count: the library calls ``deployforge bench --against timm`` makes."""

    def say(message: str) -> None:
        _say(message if message.startswith(spec.name) else f"{spec.name}: {message}")

    if spec.timm_name is not None:
        peer = prepare_timm_peer(spec, scratch, opset, progress=say)
        rows = bench_timm_peer(peer, protocols, say, peaks)
    else:  # no timm twin: ours against our multi-branch original only
        needs = Scratch(scratch, ExportSettings(target=Target.ONNX, opset=opset, multibranch=True), has_onnx_pair)
        (directory,) = resolve_model_dirs([spec.name], scratch / "none", needs, say)
        rows = bench_export(directory, protocols, say, peaks)
    when = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
    return [ZooRow.from_bench(spec, opset, [r for r in rows if r.pair.threads == p.threads], when) for p in protocols]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet_converters() -> None:
    """The exporters' warnings and log chatter would drown the progress lines."""
    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "onnxscript", "torch._dynamo", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Measure what is missing, rewrite the outputs after every model; exit 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated registry names (default: every registered model)")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--runs", type=int, default=TimingProtocol.runs, help="minimum timed runs per graph")
    parser.add_argument("--min-time-s", type=float, default=TimingProtocol.min_time_s, help="minimum timing seconds")
    parser.add_argument("--warmup-s", type=float, default=TimingProtocol.warmup_s, help="minimum warm-up seconds")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset of every export")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="directory of the outputs")
    parser.add_argument("--remeasure", action="store_true", help="time the models again even if already in the table")
    args = parser.parse_args(argv)
    _quiet_converters()
    try:
        pyplot()  # fail before a long run, not after it
        specs = [get_spec(n.strip()) for n in args.models.split(",")] if args.models else list_models()
        ExportSettings(target=Target.ONNX, opset=args.opset)  # checks the opset
        base = TimingProtocol(runs=args.runs, warmup_s=args.warmup_s, min_time_s=args.min_time_s)
        protocols = [dataclasses.replace(base, threads=n) for n in parse_counts(args.threads, "threads", "threads")]
        wanted = {p.threads for p in protocols}
        rows = read_rows(args.out / CSV_NAME)
        done = {(r.model, r.threads) for r in rows if r.opset == args.opset}
        todo = [s for s in specs if args.remeasure or any((s.name, t) not in done for t in wanted)]
        if todo:  # a model is timed again as a whole: all its thread counts come from one run
            rows = [r for r in rows if r.model not in {s.name for s in todo}]
        notes = sorted({w for p in protocols if (w := thread_warning(p.threads))})
        missing: dict[str, str] = {}
        written = write_outputs(rows, args.out, base, missing, notes) if rows else []
        peaks = []
        for protocol in protocols if todo else []:
            _say(f"measuring the FP32 GEMM peak at {protocol.threads} thread(s)")
            peaks.append(measure_peak(protocol))
            _say(f"  {peaks[-1].gflops:.1f} GFLOP/s")
        for n, spec in enumerate(todo, 1):
            _say(f"[{n}/{len(todo)}] {spec.name}")
            try:
                with tempfile.TemporaryDirectory(prefix=f"zoo.{spec.name}.") as scratch:
                    rows += measure_model(spec, Path(scratch), protocols, peaks, args.opset)
            except DeployforgeError as error:  # one model's failure does not stop the zoo
                missing[spec.name] = str(error)
                _say(f"{spec.name}: not measured: {error}")
            written = write_outputs(rows, args.out, base, missing, notes)  # an interrupted run keeps every model
        written = write_outputs(rows, args.out, base, missing, notes)
    except DeployforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
