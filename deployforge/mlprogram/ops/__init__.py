"""MIL op implementations, registered by type in :data:`OPS` (importing this package registers them all)."""

from . import conv, elementwise, linalg, norm, reduce, resize, shape  # noqa: F401  (registration)
from .base import OPS, Args, OpFunction

__all__ = ["OPS", "Args", "OpFunction"]
