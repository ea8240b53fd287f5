"""Export targets, registered by name.

Each module here implements :class:`deployforge.targets.protocol.Target` and exposes it as ``TARGET``. The
pipeline, ``verify`` and ``bench`` find targets only through :data:`REGISTERED` and :func:`get_target`, so a new
target is one new module and one line below. Modules are imported on first use: registering a target costs
nothing until it is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from deployforge.errors import InvalidSetting

if TYPE_CHECKING:
    from .protocol import Target

REGISTERED: dict[str, str] = {
    "onnx": "deployforge.targets.onnx",
    "coreml": "deployforge.targets.coreml",
    "executorch": "deployforge.targets.executorch",
    "litert": "deployforge.targets.litert",
    "ncnn": "deployforge.targets.ncnn",
    "ort": "deployforge.targets.ort",
}


def get_target(name: str) -> Target:
    """The registered target called ``name``.

    Raises:
        InvalidSetting: no target has that name.
    """
    if name not in REGISTERED:
        choices = ", ".join(REGISTERED)
        raise InvalidSetting("target", f"unknown export target '{name}'; choose from {choices} (or all)")
    return importlib.import_module(REGISTERED[name]).TARGET
