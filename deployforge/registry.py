"""Model registry: every shipped variant, as data, with the facts the pipeline needs."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from .errors import DeployforgeError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model variant.

    Attributes:
        name: registry name (``fastvit_t8``).
        family: family name (``fastvit``).
        builder: returns the train-time (multi-branch) ``nn.Module`` with random weights.
        input_size: square input side the variant is published at.
        params_m: reference parameter count (millions) of the reparameterized model, measured on the
            reference implementation; the size gate compares against it.
        gmacs: reference multiply-accumulates (G) at ``input_size``, batch 1.
        published_params_m: the paper's figure, for the docs.
        published_gmacs: the paper's figure, for the docs.
        timm_name: the same architecture in timm, if timm ships it (the external oracle).
        key_map: maps a timm/reference state dict onto ours (identity when names agree).
        mean: input normalization mean.
        std: input normalization std.
    """

    name: str
    family: str
    builder: Callable[[], nn.Module]
    input_size: int
    params_m: float
    gmacs: float
    published_params_m: float | None = None
    published_gmacs: float | None = None
    timm_name: str | None = None
    key_map: Callable[[Mapping], dict] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    notes: str = field(default="", compare=False)

    def build(self) -> nn.Module:
        """Return a fresh train-time model in eval mode."""
        return self.builder().eval()


def variant_specs(
    family: str,
    build: Callable[[str], nn.Module],
    sizes: Mapping[str, tuple[float, ...]],
    input_size: int,
    **shared: object,
) -> list[ModelSpec]:
    """One spec per variant of a family whose variants share everything but their name and figures.

    Args:
        family: the family name.
        build: ``build(name)`` returns the train-time variant.
        sizes: ``name -> (params_m, gmacs[, published_params_m, published_gmacs])``; the timm name is
            the registry name.
        input_size: the family's published input side.
        **shared: further ModelSpec fields common to every variant (``key_map``, ``mean``, ``std``).
    """
    specs = []
    for name, (params_m, gmacs, *published) in sizes.items():
        published_params_m, published_gmacs = (*published, None, None)[:2]
        specs.append(
            ModelSpec(
                name=name,
                family=family,
                builder=partial(build, name),
                input_size=input_size,
                params_m=params_m,
                gmacs=gmacs,
                published_params_m=published_params_m,
                published_gmacs=published_gmacs,
                timm_name=name,
                **shared,
            )
        )
    return specs


def _all_specs() -> dict[str, ModelSpec]:
    from deployforge.models import MODEL_SPECS  # lazy: importing models imports torch

    return {spec.name: spec for spec in MODEL_SPECS}


def list_models(family: str | None = None) -> list[ModelSpec]:
    """Return every registered spec (optionally of one family), in registration order."""
    specs = list(_all_specs().values())
    if family is not None:
        families = sorted({s.family for s in specs})
        if family not in families:
            raise DeployforgeError(f"unknown family '{family}'; choose one of {', '.join(families)}")
        specs = [s for s in specs if s.family == family]
    return specs


def get_spec(name: str) -> ModelSpec:
    """Return the spec called ``name``.

    Raises:
        DeployforgeError: unknown name; the message suggests the closest registered names.
    """
    specs = _all_specs()
    if name in specs:
        return specs[name]
    close = difflib.get_close_matches(name, specs, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `deployforge list` to see every model"
    raise DeployforgeError(f"unknown model '{name}'; {hint}")
