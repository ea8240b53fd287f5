"""Model lookup: every shipped variant by name or family, with errors that suggest the fix.

The records themselves (:class:`ModelSpec`, :class:`ReferenceSize`) and the registry that refuses a name
twice live in :mod:`deployforge.models.spec`; they are re-exported here. Importing this module stays cheap:
the models (and torch) load on the first lookup or the first use of a re-exported name.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from .errors import DeployforgeError

if TYPE_CHECKING:
    from deployforge.models.spec import (
        DEFAULT_CLASSES,
        IMAGENET_MEAN,
        IMAGENET_STD,
        ModelSpec,
        ReferenceSize,
        Registry,
    )

__all__ = [
    "DEFAULT_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpec",
    "ReferenceSize",
    "get_spec",
    "list_models",
    "rebuildable_spec",
]

_REEXPORTED = frozenset({"DEFAULT_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "ModelSpec", "ReferenceSize"})


def __getattr__(name: str) -> object:
    """Resolve the re-exported names of :mod:`deployforge.models.spec` on first use."""
    if name in _REEXPORTED:
        from deployforge.models import spec  # lazy: importing models imports torch

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registry() -> Registry:
    from deployforge.models import REGISTRY  # lazy: importing models imports torch

    return REGISTRY


def list_models(family: str | None = None) -> list[ModelSpec]:
    """Return every registered spec (optionally of one family), in registration order.

    Args:
        family: keep only this family's variants (``fastvit``, ...), or ``None`` for all.

    Raises:
        DeployforgeError: no registered model is of ``family``; the message lists the families.
    """
    specs = list(_registry())
    if family is not None:
        families = sorted({s.family for s in specs})
        if family not in families:
            raise DeployforgeError(f"unknown family '{family}'; choose one of {', '.join(families)}")
        specs = [s for s in specs if s.family == family]
    return specs


def get_spec(name: str) -> ModelSpec:
    """Return the spec called ``name``.

    Args:
        name: a registered model name (``fastvit_t8``).

    Raises:
        DeployforgeError: unknown name; the message suggests the closest registered names.
    """
    registry = _registry()
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, registry.names(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `deployforge list` to see every model"
    raise DeployforgeError(f"unknown model '{name}'; {hint}")


def rebuildable_spec(name: str, origin: str = "registry", num_classes: int | None = None) -> ModelSpec:
    """The spec an export was made from, as its manifest names it: to rebuild the original.

    Args:
        name: the manifest's model name.
        origin: the manifest's origin (``registry``, ``timm`` or ``module``).
        num_classes: the class count the export used (``None``: the architecture's).

    Raises:
        DeployforgeError: the model cannot be rebuilt (a module handed to the Python API, or an unknown name or
            origin).
    """
    if origin == "registry":
        spec = get_spec(name)
    elif origin == "timm":
        from .timm_models import timm_spec

        spec = timm_spec(name)
    elif origin == "module":
        raise DeployforgeError(
            f"{name} was a module handed to deployforge.export; it cannot be rebuilt here (its artifacts are checked "
            "against the golden vectors written beside them)"
        )
    else:
        raise DeployforgeError(f"{name}: unknown model origin '{origin}'; re-run `deployforge export`")
    if num_classes is None or num_classes == spec.num_classes:
        return spec
    import dataclasses

    return dataclasses.replace(spec, num_classes=num_classes)
