"""Models outside the zoo, by timm name: ``deployforge export timm:NAME --to all``, stage by stage.

For each timm model: random weights stressed and conditioned as the zoo's, at timm's own input size, through the
whole pipeline (fuse, reparameterize by timm's conventions, trace, ONNX, Core ML FP16 run by the interpreter). A row
gives every stage's rel-L2 against the original, the blocks merged by timm's conventions, the BatchNormalization
nodes left in the ONNX graph and the export's time; a model that fails gives the export's one-line error.

Usage:
    python benchmarks/timm_models.py [--models repvit_m0_9,repvgg_a0] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import deployforge
from deployforge.errors import DeployforgeError

# Reparameterizable or fusable blocks by timm's conventions first, then ordinary architectures (BN folds only).
MODELS = (
    "repvit_m0_9",
    "repvit_m1_1",
    "repghostnet_050",
    "repghostnet_100",
    "repvgg_a0",
    "repvgg_b0",
    "mobileone_s1",
    "fastvit_t8",
    "fastvit_mci0",
    "tiny_vit_5m_224",
    "levit_128s",
    "efficientvit_m0",
    "efficientvit_b0",
    "ghostnetv2_100",
    "hgnetv2_b0",
    "mobilenetv4_conv_small",
    "convnext_atto",
    "resnet18",
)
HEADER = (
    "| timm model | input | waterfall: stage rel-L2 (Core ML FP16 top-1) | merged by timm's conventions "
    "| BN nodes left | export (s) | result |\n|---|---|---|---|---|---|---|"
)


def measure(name: str, scratch: Path) -> str:
    """One table row for ``timm:NAME``."""
    started = time.perf_counter()
    try:
        report = deployforge.export(f"timm:{name}", to="all", out=scratch)
    except DeployforgeError as error:
        return f"| {name} | — | — | — | — | {time.perf_counter() - started:.0f} | fails: {error} |"
    seconds = time.perf_counter() - started
    cells = []
    for row in report.stages:
        if row.parity is None:
            continue
        cell = f"{row.stage} {row.parity.rel_l2:.1e}"
        if row.parity.min_top1 is not None:
            cell += f" ({row.parity.top1:.2f})"
        cells.append(cell)
    merge = next(row for row in report.stages if row.stage == "reparameterize")
    side = report.manifest.input.shape[-1]
    verdict = "ok" if report.ok else "breach: " + "; ".join(report.breaches)
    return (
        f"| {name} | {side} | {', '.join(cells)} | {merge.details.foreign_merged} "
        f"| {report.manifest.size.onnx_batchnorm_nodes} | {seconds:.0f} | {verdict} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated timm names (default: a list of 18)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "timm_models.md")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else MODELS
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="deployforge-timm-") as scratch:
            rows.append(measure(name, Path(scratch)))
        print(rows[-1], flush=True)
        args.out.write_text(HEADER + "\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
