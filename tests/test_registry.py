"""Registry coverage: every registered model is exercised by the parity, oracle and size tests.

Collected in a subprocess (pytest --collect-only) so the check sees exactly what a test run would run:
a family added later without an oracle, or filtered out of a parametrization, fails here. The oracle is
timm's implementation where timm has the architecture (tests/test_oracle.py), otherwise at least
``STRUCTURAL_TESTS`` tests marked ``structural_oracle`` parametrized with the model (besides the size gate,
which every model has).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from deployforge.models import REGISTRY
from deployforge.models.spec import Registry
from deployforge.registry import get_spec, list_models

TESTS = Path(__file__).parent
# test file -> the test functions that must be parametrized over every registered model
REQUIRED = {
    "test_stages.py": ("test_stage_parity", "test_no_batchnorm_after_fuse_and_reparameterize"),
    "test_faults.py": ("test_stress_recipe_moves_every_statistic",),
    "test_sizes.py": (
        "test_reparameterized_params_match_registry",
        "test_reparameterized_macs_match_registry",
        "test_onnx_matches_the_multi_branch_original",
        "test_onnx_batch_dimension_is_symbolic",
        "test_reparameterized_onnx_has_no_batchnorm",
    ),
    "test_audit.py": ("test_runtime_fuses_every_activation_and_norm",),
}


TIMM_ORACLE = ("test_oracle.py", "test_matches_timm_with_the_same_weights")
STRUCTURAL_TESTS = 2  # at least: the tokens change the output, one pixel changes the tokens


def _collect(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", *args],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


@pytest.fixture(scope="module")
def collected() -> set[str]:
    return _collect(*(str(TESTS / name) for name in {*REQUIRED, TIMM_ORACLE[0]}))


@pytest.fixture(scope="module")
def structural() -> set[str]:
    return _collect("-m", "structural_oracle", str(TESTS))


def _parametrized_with(node: str, name: str) -> bool:
    return node.endswith("]") and name in node.rsplit("[", 1)[1][:-1].split("-")


@pytest.mark.parametrize("name", [s.name for s in list_models()])
def test_every_model_is_covered(name, collected, structural):
    required = dict(REQUIRED)
    if get_spec(name).timm_name:
        required[TIMM_ORACLE[0]] = (TIMM_ORACLE[1],)
    missing = [
        f"{file}::{test}"
        for file, tests in required.items()
        for test in tests
        if not any(node.startswith(f"tests/{file}::{test}[") and _parametrized_with(node, name) for node in collected)
    ]
    assert not missing, f"{name} is not exercised by {missing}"
    if not get_spec(name).timm_name:
        oracle = [node for node in structural if _parametrized_with(node, name)]
        assert len(oracle) >= STRUCTURAL_TESTS, f"{name} has no timm twin and {len(oracle)} structural oracle test(s)"


def test_every_spec_has_reference_sizes():
    for spec in list_models():
        assert spec.reference.params_m > 0 and spec.reference.gmacs > 0, spec.name


def test_every_spec_is_one_record_with_a_dataclass_config_and_a_sourced_reference():
    for spec in list_models():
        assert dataclasses.is_dataclass(spec.config) and not isinstance(spec.config, type), spec.name
        with pytest.raises(dataclasses.FrozenInstanceError):  # configs are values, shared by every build
            setattr(spec.config, dataclasses.fields(spec.config)[0].name, None)
        assert spec.reference.source.strip(), f"{spec.name} does not say where its reference sizes come from"


def test_registering_a_name_twice_raises():
    first = get_spec("fastvit_t8")
    registry = Registry([first])
    clash = dataclasses.replace(get_spec("fastvit_t12"), name="fastvit_t8")
    with pytest.raises(ValueError, match="'fastvit_t8' is already registered"):
        registry.register(clash)
    assert registry["fastvit_t8"] is first and len(registry) == 1, "a refused registration changes nothing"


def test_the_model_registry_refuses_a_registered_name():
    before = list(REGISTRY)
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(get_spec("mobileone_s0"))
    assert list(REGISTRY) == before == list_models()
