"""The toolchain's own speed: every stage row carries its wall time, and what the pipeline shares changes nothing.

Timing targets are measured, never asserted (docs/design.md, "Latency protocol"): these tests check that the
times are recorded, written and shown, and that the parity forward that uses both cores computes what a plain
forward computes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from deployforge import pipeline
from deployforge.cli.render import stage_notes
from deployforge.manifest import read_manifest
from deployforge.options import ExportSettings, Target
from deployforge.registry import get_spec
from deployforge.verification import verify_directory

MODEL, SIZE = "fastvit_t8", 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small export of every target (ONNX pair and Core ML package)."""
    out = tmp_path_factory.mktemp("speed")
    report = pipeline.export(get_spec(MODEL), ExportSettings(Target.ALL, input_size=SIZE, multibranch=True), out=out)
    assert report.ok, report.breaches
    return report


def test_every_export_stage_is_timed(exported):
    stages = [row.stage for row in exported.stages]
    assert stages == ["fuse", "reparameterize", "trace", "onnx", "onnx-multibranch", "coreml-fp16"]
    for row in exported.stages:
        assert row.seconds > 0, row
    # the rows are parts of the run; the manifest's total (rounded to 0.1 s) also holds the build and the sizes
    assert sum(row.seconds for row in exported.stages) <= exported.manifest.seconds + 0.05


def test_stage_times_are_written_and_read_back(exported):
    manifest = read_manifest(exported.directory)
    assert [row.seconds for row in manifest.stages] == [row.seconds for row in exported.stages]


def test_every_verify_row_is_timed(exported):
    report = verify_directory(exported.directory)
    assert report.ok, report.breaches
    assert {row.stage for row in report.stages} == {"original"} | {row.stage for row in exported.stages}
    for row in report.stages:
        assert row.seconds > 0, row


def test_stage_notes_show_the_time(exported):
    notes = stage_notes(exported)
    assert len(notes) == len(exported.stages)
    for line, row in zip(notes, exported.stages, strict=True):
        assert line.startswith(f"  {row.stage}: "), line
        assert re.search(r", [0-9]+\.[0-9]+ s$", line), line


def test_parity_forward_runs_one_chunk_per_thread(stressed_original, make_inputs):
    """With 2 threads the batch runs as 2 chunks of one thread each: the same numbers a 1-thread run of each
    chunk gives, every time; torch's thread setting is left as it was."""
    model = stressed_original("mobilevitv2_050")
    inputs = make_inputs(batch=pipeline.PARITY_BATCH)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        split = pipeline.logits(model, inputs)
        assert torch.get_num_threads() == 2
        assert np.array_equal(pipeline.logits(model, inputs), split)
        torch.set_num_threads(1)
        with torch.no_grad():
            chunks = torch.cat([model(chunk) for chunk in inputs.tensor_split(2)]).numpy()
            whole = model(inputs).numpy()
        assert np.array_equal(split, chunks)
        assert np.array_equal(pipeline.logits(model, inputs), whole)  # one thread: one forward, no worker
    finally:
        torch.set_num_threads(threads)


def test_onnx_parity_runs_one_chunk_per_thread(stressed_original, make_inputs):
    """onnxruntime too: one session, one chunk per thread, the numbers of a run of each chunk; a graph of fixed
    batch runs whole (chunks of it would not fit its input)."""
    from deployforge.artifact_parity import onnx_logits
    from deployforge.targets.onnx import export_onnx, run_onnx
    from deployforge.trace import trace

    model = stressed_original("mobilevitv2_050")
    inputs = make_inputs(batch=pipeline.PARITY_BATCH)
    dynamic = export_onnx(trace(model, inputs[:2]), inputs[:2]).SerializeToString()
    fixed = export_onnx(trace(model, inputs[:2]), inputs[:2], batch=len(inputs)).SerializeToString()
    x = inputs.numpy()
    chunks = np.concatenate([run_onnx(dynamic, chunk) for chunk in np.array_split(x, 2)])
    assert np.array_equal(onnx_logits(dynamic, x, workers=2), chunks)
    assert np.array_equal(onnx_logits(fixed, x, workers=2), run_onnx(fixed, x))
    assert np.array_equal(onnx_logits(dynamic, x, workers=1), run_onnx(dynamic, x))


def test_fewer_gc_passes_restores_the_thresholds():
    import gc

    before = gc.get_threshold()
    from deployforge.gc_tuning import GC_YOUNG_THRESHOLD, fewer_gc_passes

    with pytest.raises(RuntimeError), fewer_gc_passes():
        assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        raise RuntimeError("a failing stage")
    assert gc.get_threshold() == before
