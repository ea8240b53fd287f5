"""Load user checkpoints (.pth / .safetensors) strictly into a registered model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
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


def mapped_state_dict(spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    """Read the checkpoint at ``path`` (:func:`read_state_dict`) and map its keys onto ``spec``'s names."""
    state = read_state_dict(path)
    return spec.key_map(state) if spec.key_map is not None else state


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def class_dependent_shapes(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """The classifier's tensors: every state-dict key whose shape depends on the class count.

    Found by building the architecture twice on the meta device (no storage, no computation), with
    :attr:`ModelSpec.num_classes` and one class more, and keeping the keys whose shapes differ.

    Returns:
        ``key -> (shape, dims)``: the shape at ``spec.num_classes`` and the dimensions that hold the class count.
    """
    with torch.device("meta"):
        one = spec.build().state_dict()
        other = replace(spec, num_classes=spec.num_classes + 1).build().state_dict()
    found = {}
    for key, tensor in one.items():
        shape, shifted = tuple(tensor.shape), tuple(other[key].shape)
        if shape != shifted:
            found[key] = (shape, tuple(i for i, (a, b) in enumerate(zip(shape, shifted, strict=True)) if a != b))
    return found


def checkpoint_classes(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> tuple[int, str] | None:
    """The class count a checkpoint's classifier was trained for, read from its shapes.

    Args:
        spec: the registered model (its key map already applied to ``state``).
        state: the checkpoint's state dict, in our key names.

    Returns:
        ``(count, evidence)`` when every classifier tensor is present and differs from the architecture only in
        its class dimension, all by the same count (``evidence`` names the first tensor and its shape); ``None``
        when the classifier is missing or its other dimensions do not fit (the strict load then lists the keys).
    """
    counts = set()
    evidence = ""
    for key, (shape, dims) in class_dependent_shapes(spec).items():
        if key not in state or state[key].dim() != len(shape):
            return None
        found = tuple(state[key].shape)
        if any(found[i] != shape[i] for i in range(len(shape)) if i not in dims):
            return None
        counts |= {found[i] for i in dims}
        evidence = evidence or f"{key} {found}"
    if len(counts) != 1:
        return None
    return counts.pop(), evidence


def load_weights(
    model: nn.Module, spec: ModelSpec, path: Path, state: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly, through the family's key map.

    Args:
        model: the architecture, built with the checkpoint's class count.
        spec: its spec (key map, names for the message).
        path: the checkpoint.
        state: its state dict already read and key-mapped (read from ``path`` when ``None``).

    Raises:
        InvalidSetting: the file is unreadable, or its keys/shapes do not match the architecture; the
            message lists missing, unexpected and shape-mismatched keys.
    """
    if state is None:
        state = mapped_state_dict(spec, path)
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
