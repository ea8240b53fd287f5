"""Load user checkpoints (.pth / .safetensors) strictly into a registered model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import InvalidSetting
from .registry import ModelSpec

_WRAPPER_KEYS = ("state_dict", "model", "model_ema")
_MAX_LISTED = 5


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt`` (``torch.load(weights_only=True)``).

    A checkpoint that wraps its weights under ``state_dict``/``model``/``model_ema`` is unwrapped.

    Raises:
        InvalidSetting: missing, unreadable or non-tensor file.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidSetting("weights", f"weights file not found: {path}; pass an existing .pth or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every reader failure means the same thing to the user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidSetting(
            "weights",
            f"cannot read weights file {path} ({first_line[:160]}); "
            "pass a state dict saved with torch.save or safetensors",
        ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidSetting(
            "weights", f"weights file {path} does not hold a state dict of tensors; save model.state_dict()"
        )
    return dict(state)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_weights(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly, through the family's key map.

    Raises:
        InvalidSetting: the file is unreadable, or its keys/shapes do not match the architecture; the
            message lists missing, unexpected and shape-mismatched keys.
    """
    state = read_state_dict(path)
    if spec.key_map is not None:
        state = spec.key_map(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label} {len(keys)}: {_listed(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
            if keys
        ]
        raise InvalidSetting(
            "weights",
            f"weights file {path} does not fit {spec.name} ({'; '.join(parts)}); "
            f"pass a checkpoint of {spec.name}" + (f" (timm: {spec.timm_name})" if spec.timm_name else ""),
        )
    model.load_state_dict(state, strict=True)
