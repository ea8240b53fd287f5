"""FastViT-T8 on LiteRT at its published size, plain against ``split-dw7x7``, timed interleaved at 1 thread.

Both files come from ``deployforge.export`` (so each is proven by the waterfall); timing is deployforge's own
interleaved protocol, and the ratio carries its bootstrap 95 % interval.

Usage:
    python benchmarks/litert_split_dw7x7.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import deployforge
from deployforge.benchmark import _time_interleaved, _warmup, bootstrap_ratio_of_medians
from deployforge.options import TimingProtocol
from deployforge.targets.litert import TARGET
from deployforge.targets.rewrites import SPLIT_DW7X7

MODEL = "fastvit_t8"
PROTOCOL = TimingProtocol(runs=40, min_time_s=2.0, warmup_s=0.5)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="deployforge-split-") as scratch:
        runners, errors = [], []
        for label, rewrites in (("plain", ()), ("split", (SPLIT_DW7X7,))):
            report = deployforge.export(MODEL, to="litert", rewrites=rewrites, out=Path(scratch) / label)
            if not report.ok:
                raise SystemExit(f"{label}: {'; '.join(report.breaches)}")
            errors.append(next(row.parity.rel_l2 for row in report.stages if row.stage == TARGET.name))
            side = report.manifest.input.shape[-1]
            run = TARGET.load(report.directory / TARGET.files(MODEL)[0], PROTOCOL.threads)
            image = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
            runners.append(lambda run=run, image=image: _timed(run, image))
        for timed in runners:
            _warmup(timed, PROTOCOL.warmup_s)
        plain, split = _time_interleaved(runners, PROTOCOL.runs, PROTOCOL.min_time_s)
    low, high = bootstrap_ratio_of_medians(plain, split)
    print(f"{MODEL} {side} px, LiteRT, 1 thread, {len(plain)} interleaved rounds")
    print(f"plain p50 {statistics.median(plain):.2f} ms (rel-L2 {errors[0]:.2e})")
    print(f"split p50 {statistics.median(split):.2f} ms (rel-L2 {errors[1]:.2e})")
    print(f"speed-up {statistics.median(plain) / statistics.median(split):.2f}x [{low:.2f}, {high:.2f}]")


def _timed(run, image: np.ndarray) -> float:
    """One inference's latency in milliseconds."""
    start = time.perf_counter()
    run(image)
    return (time.perf_counter() - start) * 1e3


if __name__ == "__main__":
    main()
