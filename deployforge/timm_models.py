"""Any model timm can build, as the pipeline's model record: ``deployforge export timm:NAME``.

timm is an optional extra (``pip install deployforge[timm]``). The record takes the input size, normalization and
fixed-size flag from the model's pretrained config (no weights are downloaded: the model is built with random
weights, stressed and conditioned as the registry's are, or loaded from a checkpoint in timm's own key names). Its
blocks merge through timm's conventions (:func:`deployforge.reparam.reparameterize`).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from .errors import DeployforgeError

if TYPE_CHECKING:
    from torch import nn

    from .registry import ModelSpec

PREFIX = "timm:"
EXTRA = "pip install 'deployforge[timm]'"


def is_timm_name(name: str) -> bool:
    """Whether ``name`` asks for a timm model (``timm:NAME``)."""
    return name.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise DeployforgeError(f"timm: models need timm, which is not installed; {EXTRA}") from None
    return timm


def _build(name: str, num_classes: int | None = None) -> nn.Module:
    timm = _timm()
    options = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(name, pretrained=False, **options)


def timm_spec(name: str) -> ModelSpec:
    """The record of timm's model ``name`` (with or without the ``timm:`` prefix).

    Raises:
        DeployforgeError: timm is not installed (naming the extra), or timm has no model of that name (suggesting
            the closest).
    """
    from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

    timm = _timm()
    name = name.removeprefix(PREFIX)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(PREFIX + c for c in close)}?" if close else "see timm.list_models()"
        raise DeployforgeError(f"timm has no model '{name}'; {hint}")
    config = timm.models.get_pretrained_cfg(name)
    size = config.input_size if config is not None else (3, 224, 224)
    if size[1] != size[2]:
        raise DeployforgeError(f"timm:{name} takes {size[1]}x{size[2]} inputs; deployforge exports square ones")
    return ModelSpec(
        name=name,
        family="timm",
        config=name,
        builder=_build,
        input_size=size[1],
        reference=None,
        timm_name=name,
        mean=tuple(config.mean) if config is not None else IMAGENET_MEAN,
        std=tuple(config.std) if config is not None else IMAGENET_STD,
        fixed_input_size=bool(getattr(config, "fixed_input_size", False)),
        num_classes=getattr(config, "num_classes", None) or 1000,
        origin="timm",
    )
