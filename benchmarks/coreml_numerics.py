"""Core ML numerics per model: FP32 and FP16 error of the interpreted package, and the interpreter's run time.

For each model, at its published input size: build the original as ``export`` does (stressed, conditioned random
weights), fuse and reparameterize, convert to Core ML at FP32 and at FP16, then run each package with
``deployforge.mlprogram`` on the Core ML parity batch (``deployforge.artifact_parity.parity_batch``) and compare with
the original. The run time is the interpreter's alone (load + run): one image (best of ``--repeats``) and the
parity batch.

Usage:
    python benchmarks/coreml_numerics.py [--models fastvit_t8,mobileone_s0] [--repeats 3] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from deployforge.artifact_parity import PARITY_IMAGES, package_logits, parity_batch
from deployforge.fuse import fuse_batchnorm
from deployforge.options import Precision
from deployforge.parity import TOLERANCES, compare
from deployforge.pipeline import build_original, parity_inputs
from deployforge.registry import get_spec, list_models
from deployforge.reparam import reparameterize
from deployforge.targets.coreml import export_coreml

HEADER = (
    "| model | input | FP32 rel-L2 | FP32 top-1 | FP16 rel-L2 | FP16 top-1 | interpreter, 1 image FP32 / FP16 (s) "
    f"| {PARITY_IMAGES} images FP32 / FP16 (s) |\n|---|---|---|---|---|---|---|---|"
)


def _time_one(path: Path, image: np.ndarray, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        package_logits(path, image)
        best = min(best, time.perf_counter() - started)
    return best


def measure(name: str, repeats: int, scratch: Path) -> str:
    """One table row for ``name``."""
    spec = get_spec(name)
    side = spec.input_size
    original, _ = build_original(spec, None, input_size=side)
    fused, _ = fuse_batchnorm(original, parity_inputs(side, 2))
    merged, _ = reparameterize(fused)
    images, reference = parity_batch(original, side, spec.mean, spec.std)
    cells, one, batch = [], [], []
    for precision in (Precision.FP32, Precision.FP16):
        path = scratch / f"{name}.{precision.value}.mlpackage"
        export_coreml(merged, parity_inputs(side, 1), path, precision)
        stage = f"coreml-{precision.value}"
        started = time.perf_counter()
        outputs = package_logits(path, images.inputs)
        batch.append(time.perf_counter() - started)
        parity = compare(outputs, reference, TOLERANCES.for_stage(stage), TOLERANCES.min_top1_for_stage(stage))
        mark = "" if parity.ok else " ✗"
        cells += [f"{parity.rel_l2:.2e}{mark}", f"{parity.top1:.3f}"]
        one.append(_time_one(path, images.inputs[:1], repeats))
    return f"| {name} | {side} | {' | '.join(cells)} | {one[0]:.2f} / {one[1]:.2f} | {batch[0]:.1f} / {batch[1]:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: every registered model)")
    parser.add_argument("--repeats", type=int, default=3, help="timed one-image runs per package (best is kept)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else [spec.name for spec in list_models()]
    rows = [HEADER]
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            rows.append(measure(name, args.repeats, Path(scratch)))
            print(rows[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
