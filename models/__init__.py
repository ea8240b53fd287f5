"""Model definitions (installed as ``deployforge.models``).

Each family module declares its variants as ``SPECS``, a tuple of :class:`~.spec.ModelSpec` records;
:data:`REGISTRY` holds them all, in registration order: fastvit, mobileone, mobilevit, mobilevitv2, efficientformer,
mobileformer, vtresnet.
"""

from . import efficientformer, fastvit, mobileformer, mobileone, mobilevit, mobilevitv2, vtresnet
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, ReferenceSize, Registry

REGISTRY = Registry(
    (
        *fastvit.SPECS,
        *mobileone.SPECS,
        *mobilevit.SPECS,
        *mobilevitv2.SPECS,
        *efficientformer.SPECS,
        *mobileformer.SPECS,
        *vtresnet.SPECS,
    )
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "REGISTRY", "ModelSpec", "ReferenceSize", "Registry"]
