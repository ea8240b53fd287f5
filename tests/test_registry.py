"""Registry coverage: every registered model is exercised by the parity, oracle and size tests.

Collected in a subprocess (pytest --collect-only) so the check sees exactly what a test run would run:
a family added later without a timm oracle, or filtered out of a parametrization, fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deployforge.registry import list_models

TESTS = Path(__file__).parent
# test file -> the test functions that must be parametrized over every registered model
REQUIRED = {
    "test_stages.py": ("test_stage_parity", "test_no_batchnorm_after_fuse_and_reparameterize"),
    "test_oracle.py": ("test_matches_timm_with_the_same_weights",),
    "test_sizes.py": (
        "test_reparameterized_params_match_registry",
        "test_reparameterized_macs_match_registry",
        "test_onnx_matches_the_multi_branch_original",
        "test_reparameterized_onnx_has_no_batchnorm",
    ),
}


@pytest.fixture(scope="module")
def collected() -> set[str]:
    files = [str(TESTS / name) for name in REQUIRED]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", *files],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


@pytest.mark.parametrize("name", [s.name for s in list_models()])
def test_every_model_is_covered(name, collected):
    missing = [
        f"{file}::{test}"
        for file, tests in REQUIRED.items()
        for test in tests
        if not any(node.startswith(f"tests/{file}::{test}[") and name in node for node in collected)
    ]
    assert not missing, f"{name} is not exercised by {missing}"


def test_every_spec_has_reference_sizes_and_an_oracle():
    for spec in list_models():
        assert spec.params_m > 0 and spec.gmacs > 0, spec.name
        assert spec.timm_name, f"{spec.name} has no external oracle"
