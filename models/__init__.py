"""Model definitions (installed as ``deployforge.models``); each family module exports ``specs()``."""

from . import fastvit, mobileone, mobilevit, mobilevitv2

MODEL_SPECS = [*fastvit.specs(), *mobileone.specs(), *mobilevit.specs(), *mobilevitv2.specs()]

__all__ = ["MODEL_SPECS"]
