"""Activations before and after weight conditioning, for every registered model (docs/design.md, "Parity and
tolerances").

Each model is built with seeded random weights (seed 0) and stressed (``deployforge.stress``), measured, then
conditioned as ``deployforge.pipeline.build_original`` does (``deployforge.condition``) and measured again.
Measured at the variant's published input size on a batch of held-out calibration-like images (another seed than
the calibration batch), and after conditioning on N(0, 1) white noise too (the parity inputs' distribution):
max |activation| over every module's output, max |logit|, and the input-dependent fraction of the logits'
spread (``deployforge.condition.input_dependence``). The BatchNorm columns show how far the re-estimated
statistics are from a fresh BatchNorm's mean 0 / variance 1: the median over BatchNorms of the channel-mean
``|running_mean|`` and ``|log running_var|``.

Usage:
    python benchmarks/conditioning.py [--models a,b] [--size N] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from deployforge.condition import activation_stats, calibration_images, condition_weights
from deployforge.registry import ModelSpec, get_spec, list_models
from deployforge.stress import stress_weights

PROBE_SEED = 5  # held out: the calibration batch uses deployforge.condition.CALIBRATION_SEED


def _bn_distance(model: nn.Module) -> tuple[float, float]:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return float("nan"), float("nan")
    means = [float(m.running_mean.abs().mean()) for m in norms]
    logvars = [float(m.running_var.log().abs().mean()) for m in norms]
    return statistics.median(means), statistics.median(logvars)


def measure(spec: ModelSpec, size: int, batch: int) -> str:
    """One markdown row for ``spec``."""
    torch.manual_seed(0)
    model = stress_weights(spec.build(), 0).eval()
    images = calibration_images(batch, size, spec.mean, spec.std, PROBE_SEED)
    noise = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    before = activation_stats(model, images)
    started = time.perf_counter()
    report = condition_weights(model, size, spec.mean, spec.std)
    seconds = time.perf_counter() - started
    after, white = activation_stats(model, images), activation_stats(model, noise)
    mean_distance, var_distance = _bn_distance(model)
    return (
        f"| {spec.name} | {size} | {report.batchnorms} | {before.max_activation:.2g} | {before.max_logit:.2g} | "
        f"{before.input_dependence:.2f} | {after.max_activation:.3g} | {after.max_logit:.3g} | "
        f"{after.input_dependence:.2f} | {white.max_activation:.3g} | {white.input_dependence:.2f} | "
        f"{mean_distance:.2f} | {var_distance:.2f} | {seconds:.1f} |"
    )


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: every registered model)")
    parser.add_argument("--size", type=int, help="input side (default: each variant's published size)")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    specs = [get_spec(n) for n in args.models.split(",")] if args.models else list_models()
    print(
        "| model | px | BNs | max act before | max logit before | input-dep. before | max act after | "
        "max logit after | input-dep. after | max act white noise | input-dep. white | BN |mean| | "
        "BN |log var| | conditioning s |"
    )
    print("|---|" + "---:|" * 13)
    for spec in specs:
        size = args.size if args.size and not spec.fixed_input_size else spec.input_size
        with torch.no_grad():
            print(measure(spec, size, args.batch), flush=True)


if __name__ == "__main__":
    main()
