"""deployforge: fuse, reparameterize, trace and export mobile vision transformers with proven parity.

The Python API is :func:`export`, :func:`verify` and :func:`bench` (and :func:`deployforge.api.locate`); each
returns the typed report the command line renders. Importing the package is cheap; torch, onnxruntime and
coremltools load only where they are used.
"""

from importlib import metadata

from .api import bench, export, verify

__version__ = metadata.version("deployforge")
__all__ = ["__version__", "bench", "export", "verify"]
