"""Model definitions (installed as ``deployforge.models``); each family module exports ``specs()``."""

from . import fastvit

MODEL_SPECS = [*fastvit.specs()]

__all__ = ["MODEL_SPECS"]
