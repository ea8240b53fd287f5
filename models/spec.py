"""The record every model variant is registered as, and the registry that holds them.

Each family module declares its variants as a tuple of :class:`ModelSpec` records built with keyword
arguments: one record per variant holds its configuration, input size and normalization, reference sizes
(and where they come from) and the name of the same architecture in timm (the external oracle).
:mod:`deployforge.models` registers them all in one :class:`Registry`, which refuses a second record
under a name already taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CLASSES = 1000  # ImageNet-1k, what every registered variant is published with


@dataclass(frozen=True)
class ReferenceSize:
    """Reference size of a variant: what the size gate compares the reparameterized model against.

    Attributes:
        params_m: parameters (millions) of the reparameterized model.
        gmacs: multiply-accumulates (G) at the published input size, batch 1.
        source: where ``params_m`` and ``gmacs`` come from (and the published figures, if given).
        published_params_m: the paper's parameter count, for the docs.
        published_gmacs: the paper's MACs, for the docs.
    """

    params_m: float
    gmacs: float
    source: str
    published_params_m: float | None = None
    published_gmacs: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One registered model variant.

    Attributes:
        name: registry name (``fastvit_t8``).
        family: family name (``fastvit``).
        config: the family's frozen configuration dataclass for this variant.
        builder: ``builder(config)`` returns the train-time (multi-branch) model with random weights.
        input_size: square input side the variant is published at.
        reference: reference params and MACs of the reparameterized model, with their source (``None`` for a
            model from outside the registry).
        timm_name: the same architecture in timm (the external oracle), or ``None`` if timm has none.
        key_map: maps a timm state dict onto ours, or ``None`` when the names agree.
        mean: input normalization mean.
        std: input normalization std.
        fixed_input_size: the architecture accepts ``input_size`` only (a table learned per token position,
            such as EfficientFormer's attention bias, fixes the token grid); ``False``: any size works.
        num_classes: classifier outputs the builder is asked for (a fine-tuned checkpoint's head sets another).
        origin: where the architecture comes from: ``registry`` (declared here), ``timm`` (built by timm by
            name) or ``module`` (a module handed to the Python API, built by copying it).
    """

    name: str
    family: str
    config: object
    builder: Callable[[Any], nn.Module]
    input_size: int
    reference: ReferenceSize | None
    timm_name: str | None
    key_map: Callable[[Mapping], dict] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fixed_input_size: bool = False
    num_classes: int = DEFAULT_CLASSES
    origin: str = "registry"

    def build(self) -> nn.Module:
        """Return a fresh train-time model with :attr:`num_classes` outputs, in eval mode."""
        if self.num_classes == DEFAULT_CLASSES:
            return self.builder(self.config).eval()
        return self.builder(self.config, num_classes=self.num_classes).eval()


class Registry:
    """Specs by name, in registration order; a name can be registered once only.

    Args:
        specs: specs to register right away, in order.
    """

    def __init__(self, specs: Iterable[ModelSpec] = ()) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ModelSpec) -> ModelSpec:
        """Add ``spec`` under its name.

        Args:
            spec: the variant's record.

        Returns:
            ``spec`` itself.

        Raises:
            ValueError: a spec of that name is already registered (the registry is left unchanged).
        """
        if spec.name in self._specs:
            raise ValueError(f"model {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def __getitem__(self, name: str) -> ModelSpec:
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(tuple(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._specs)
