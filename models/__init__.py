"""Model definitions (installed as ``deployforge.models``).

Each family module declares its variants as ``SPECS``, a tuple of :class:`~.spec.ModelSpec` records;
:data:`REGISTRY` holds them all, in registration order: fastvit, mobileone, mobilevit, mobilevitv2.
"""

from . import fastvit, mobileone, mobilevit, mobilevitv2
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, ReferenceSize, Registry

REGISTRY = Registry((*fastvit.SPECS, *mobileone.SPECS, *mobilevit.SPECS, *mobilevitv2.SPECS))

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "REGISTRY", "ModelSpec", "ReferenceSize", "Registry"]
