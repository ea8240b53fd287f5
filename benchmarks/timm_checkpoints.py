"""timm's own models as checkpoints: exported to Core ML (FP32 and FP16), verified, and judged against timm itself.

For each registered model with a timm twin: timm builds it (``--classes`` outputs), its BatchNorm statistics and
affines and its layer scales are stressed (mean ≠ 0, var ≠ 1, scales 0.1-0.6) and the state dict is saved as a
``.pth``. ``deployforge.export(NAME, weights=PTH, to="coreml", precision=...)`` exports it (checkpoints are never
conditioned), ``deployforge.verify`` re-checks the directory, and ``deployforge.mlprogram`` runs the package on the
export's golden image batch, compared with what timm's model computes on the same images. A row whose export
refuses its package (an FP16 overflow, a breach) says why, in the export's own words.

Usage:
    python benchmarks/timm_checkpoints.py [--models fastvit_t8,mobileone_s0] [--classes 10] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch

import deployforge
from deployforge.artifact_parity import package_logits
from deployforge.errors import DeployforgeError
from deployforge.golden import read_golden
from deployforge.parity import compare
from deployforge.registry import get_spec, list_models
from deployforge.stress import stress_weights

HEADER = (
    "| model | timm model | classes | input | precision | export | verify | package vs timm rel-L2 "
    "| top-1 agreement |\n|---|---|---|---|---|---|---|---|---|"
)


def family_extremes() -> list[str]:
    """Every family's smallest and largest variant that has a timm twin, in registry order."""
    by_family: dict[str, list[str]] = {}
    for spec in list_models():
        if spec.timm_name is not None:
            by_family.setdefault(spec.family, []).append(spec.name)
    return [name for names in by_family.values() for name in dict.fromkeys((names[0], names[-1]))]


def measure(name: str, classes: int, scratch: Path) -> list[str]:
    """The table rows of ``name``: one per precision."""
    spec = get_spec(name)
    torch.manual_seed(11)
    model = stress_weights(timm.create_model(spec.timm_name, pretrained=False, num_classes=classes), seed=11).eval()
    checkpoint = scratch / f"{name}.pth"
    torch.save(model.state_dict(), checkpoint)
    rows = []
    for precision in ("fp32", "fp16"):
        out = scratch / precision
        prefix = f"| {name} | {spec.timm_name} | {classes} | {spec.input_size} | {precision} |"
        try:
            report = deployforge.export(name, weights=checkpoint, to="coreml", precision=precision, out=out)
        except DeployforgeError as error:
            rows.append(f"{prefix} refused: {error} | — | — | — |")
            continue
        if not report.ok:
            rows.append(f"{prefix} refused: {'; '.join(report.breaches)} | — | — | — |")
            continue
        verified = deployforge.verify(report.directory)
        golden = read_golden(report.directory, spec.mean, spec.std)
        images = golden.images if golden.images is not None else golden.batch
        ours = package_logits(report.directory / f"{name}.mlpackage", images.inputs)
        with torch.no_grad():
            theirs = model(torch.from_numpy(images.inputs)).numpy()
        parity = compare(ours, theirs, tolerance=1.0)
        verdict = "ok" if verified.ok else "FAILED: " + "; ".join(verified.reports[0].breaches)
        rows.append(f"{prefix} ok | {verdict} | {parity.rel_l2:.2e} | {parity.top1:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: every timm family's extremes)")
    parser.add_argument("--classes", type=int, default=10, help="the checkpoint's class count (a fine-tuned head)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "timm_checkpoints.md")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else family_extremes()
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory(prefix="deployforge-timm-") as scratch:
            rows += measure(name, args.classes, Path(scratch))
        args.out.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
