"""deployforge: fuse, reparameterize, trace and export mobile vision transformers with proven parity.

Importing the package is cheap; torch, onnxruntime and coremltools load only where they are used.
"""

from importlib import metadata

__version__ = metadata.version("deployforge")
