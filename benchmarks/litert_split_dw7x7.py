"""Interleaved p50 of FastViT-T8 (256 px) on LiteRT, plain against split-dw7x7, 1 thread.

Usage: python benchmarks/litert_split_dw7x7.py
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deployforge.fuse import fuse_batchnorm
from deployforge.pipeline import build_original
from deployforge.registry import get_spec
from deployforge.reparam import reparameterize
from deployforge.targets.litert import TARGET
from deployforge.targets.protocol import TargetOptions

spec = get_spec("fastvit_t8")
original, _ = build_original(spec, None, input_size=256)
x = torch.randn(2, 3, 256, 256)
merged, _ = reparameterize(fuse_batchnorm(original, x)[0])
merged.eval()
root = Path(tempfile.mkdtemp())
paths = {}
for label, rewrites in (("plain", ()), ("split", ("split-dw7x7",))):
    d = root / label
    d.mkdir()
    TARGET.export(merged, x[:1], d, "m", TargetOptions(rewrites=rewrites))
    paths[label] = d / "m.tflite"
runners = {k: TARGET.load(p, 1) for k, p in paths.items()}
inp = x[:1].numpy()
with torch.no_grad():
    ref = original(x[:1]).numpy()
for k, r in runners.items():
    out = r(inp)
    print(k, "rel-L2", float(np.linalg.norm(out - ref) / np.linalg.norm(ref)))
times = {k: [] for k in runners}
for r in runners.values():
    for _ in range(5):
        r(inp)
for _ in range(40):
    for k, r in runners.items():
        t = time.perf_counter()
        r(inp)
        times[k].append(time.perf_counter() - t)
med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
print({k: round(v, 2) for k, v in med.items()}, "speedup", round(med["plain"] / med["split"], 2))
