"""The size table of docs/models.md: every registered model's measured size beside its reference and published ones.

Params and MACs are those of the reparameterized model at the variant's published input size, batch 1, counted
the way the export's manifest counts them (``deployforge.measure``). The models are built and merged on the meta
device (shapes only, no weights drawn), so the whole zoo takes seconds.

Usage:
    python benchmarks/model_sizes.py [--models a,b] [--family NAME]
"""

from __future__ import annotations

import argparse
import sys

import torch

from deployforge.errors import DeployforgeError
from deployforge.measure import torch_macs, torch_params
from deployforge.registry import ModelSpec, get_spec, list_models
from deployforge.reparam import reparameterize_structure


def measured_size(spec: ModelSpec) -> tuple[float, float]:
    """Parameters (M) and MACs (G) of ``spec``'s reparameterized model at its published input size."""
    with torch.device("meta"):
        original = spec.build()
    merged = reparameterize_structure(original)
    example = torch.zeros(1, 3, spec.input_size, spec.input_size, device="meta")
    return torch_params(merged) / 1e6, torch_macs(merged, example) / 1e9


def _figure(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def size_table(specs: list[ModelSpec]) -> str:
    """A markdown table: measured vs reference vs published params and MACs, with the relative gap."""
    lines = [
        "| model | input | params (M) measured | reference | published | Δ ref | GMACs measured | reference "
        "| published | Δ ref |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        params, gmacs = measured_size(spec)
        ref = spec.reference
        lines.append(
            f"| {spec.name} | {spec.input_size} | {params:.3f} | {ref.params_m:.3f} | "
            f"{_figure(ref.published_params_m, 2)} | {params / ref.params_m - 1:+.2%} | {gmacs:.4f} | "
            f"{ref.gmacs:.4f} | {_figure(ref.published_gmacs, 3)} | {gmacs / ref.gmacs - 1:+.2%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the size table for the chosen models (default: every registered model)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated registry names")
    parser.add_argument("--family", help="one family only")
    args = parser.parse_args(argv)
    try:
        specs = [get_spec(n) for n in args.models.split(",")] if args.models else list_models(args.family)
    except DeployforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(size_table(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
