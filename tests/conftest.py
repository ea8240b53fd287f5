"""Shared fixtures: stressed originals per registered model, reproducible inputs, the rel-L2 metric."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from deployforge.registry import get_spec
from deployforge.stress import stress_weights

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one intra-op thread per worker, no oversubscription.
    torch.set_num_threads(1)

SMALL = 64  # input side where the algebra does not care about the size
BIG_PARAMS_M = 20.0  # variants above this many parameters are the long (slow-marked) cases


def _rel_l2(candidate, original) -> float:
    """``‖a − b‖₂ / ‖b‖₂`` in float64, for tensors or arrays."""
    a = np.asarray(candidate.detach() if isinstance(candidate, torch.Tensor) else candidate, dtype=np.float64)
    b = np.asarray(original.detach() if isinstance(original, torch.Tensor) else original, dtype=np.float64)
    norm = np.linalg.norm(b)
    assert norm > 0, "reference output is all zeros: the comparison would be meaningless"
    return float(np.linalg.norm(a - b) / norm)


def _inputs(batch: int = 4, size: int = SMALL, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.fixture(scope="session")
def rel_l2():
    """The relative L2 error ``‖a − b‖₂ / ‖b‖₂`` (a: candidate, b: reference)."""
    return _rel_l2


@pytest.fixture(scope="session")
def make_inputs():
    """``make_inputs(batch=4, size=64, channels=3, seed=0)``: a reproducible N(0, 1) batch."""
    return _inputs


@pytest.fixture(scope="session")
def input_side():
    """``input_side(name)``: the input side tests use for a registered model: small unless its size is fixed."""

    def side(name: str) -> int:
        spec = get_spec(name)
        return spec.input_size if spec.fixed_input_size else SMALL

    return side


@pytest.fixture(scope="session")
def bn_count():
    """Number of BatchNorm modules in a model."""
    return _bn_count


class _StressedZoo:
    """Builds each registered model once per session (seeded), stresses it, keeps it in eval mode.

    Tests must not modify the returned model (stages deep-copy; a test that mutates deep-copies first).
    """

    def __init__(self) -> None:
        self._models: dict[str, nn.Module] = {}

    def __call__(self, name: str) -> nn.Module:
        if name not in self._models:
            torch.manual_seed(0)
            self._models[name] = stress_weights(get_spec(name).build(), seed=0).eval()
        return self._models[name]


@pytest.fixture(scope="session")
def stressed_original():
    """``stressed_original(name)``: the session's stressed multi-branch original of a registered model."""
    return _StressedZoo()


class _DeployedZoo:
    """Each registered model's conditioned original (as ``export`` builds it) with its fused, reparameterized form.

    Conditioned, not only stressed: a runtime's error is judged on logits of a realistic size (the stressed-only
    MobileOne-S0 reaches 1e18, where every candidate agrees to the last bit on the few logits that dominate).
    """

    def __init__(self) -> None:
        self._pairs: dict[str, tuple[nn.Module, nn.Module, int]] = {}

    def __call__(self, name: str) -> tuple[nn.Module, nn.Module, int]:
        if name not in self._pairs:
            from deployforge.fuse import fuse_batchnorm
            from deployforge.pipeline import build_original
            from deployforge.reparam import reparameterize

            spec = get_spec(name)
            side = spec.input_size if spec.fixed_input_size else SMALL
            original, _ = build_original(spec, None, input_size=side)
            fused, _ = fuse_batchnorm(original, _inputs(2, side))
            merged, _ = reparameterize(fused)
            self._pairs[name] = (original, merged.eval(), side)
        return self._pairs[name]


@pytest.fixture(scope="session")
def deployed_pair():
    """``deployed_pair(name)``: ``(original, reparameterized, side)`` of a registered model, conditioned as
    ``export`` conditions random weights, at the side tests use for it; the models must not be modified."""
    return _DeployedZoo()
