"""Every registered model's Core ML package, FP32 and FP16, run by the interpreter within the design's bounds.

The original is built as ``export`` builds it (stressed, then conditioned random weights) at the test's small input
side; the package is converted from its fused and reparameterized model and judged on the Core ML parity batch
(:func:`deployforge.artifact_parity.parity_batch`): FP32 rel-L2 ≤ 1e-4; FP16 rel-L2 ≤ 1e-2 and top-1 ≥ 0.95.
"""

from __future__ import annotations

import numpy as np
import pytest

from deployforge.artifact_parity import PARITY_IMAGES, coreml_record, parity_batch
from deployforge.fuse import fuse_batchnorm
from deployforge.options import Precision
from deployforge.pipeline import build_original, parity_inputs
from deployforge.registry import list_models
from deployforge.reparam import reparameterize
from deployforge.targets.coreml import export_coreml

BIG_PARAMS_M = 20.0  # as in conftest: variants above this many parameters are slow-marked
MODELS = [
    pytest.param(s.name, marks=pytest.mark.slow) if s.reference.params_m > BIG_PARAMS_M else s.name
    for s in list_models()
]

# coremltools' torch frontend warns of its own deprecated registry on every conversion
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("name", MODELS)
def test_fp32_and_fp16_packages_are_interpreted_within_tolerance(name, input_side, tmp_path):
    from deployforge.registry import get_spec

    spec, side = get_spec(name), input_side(name)
    original, conditioning = build_original(spec, None, input_size=side)
    assert conditioning is not None and conditioning.changed
    fused, _ = fuse_batchnorm(original, parity_inputs(side, 2))
    merged, _ = reparameterize(fused)
    images, reference = parity_batch(original, side, spec.mean, spec.std)
    assert images.inputs.shape == (PARITY_IMAGES, 3, side, side) and images.pixels.dtype == np.uint16

    for precision in (Precision.FP32, Precision.FP16):
        path = tmp_path / f"{name}.{precision.value}.mlpackage"
        details = export_coreml(merged, parity_inputs(side, 1), path, precision)

        row = coreml_record(path, details, images.inputs, reference)

        assert row.error is None, row.error
        assert row.stage == f"coreml-{precision.value}" and row.file == path.name
        assert row.parity.ok, row.breach()
        assert row.parity.min_top1 == (0.95 if precision is Precision.FP16 else None)
