"""Normalizations: ``batch_norm`` (channel axis 1), ``instance_norm``, ``layer_norm`` (any axes), ``l2_norm``."""

from __future__ import annotations

import numpy as np

from .base import Args, axis_of, rank, register


def _channel_vector(args: Args, name: str, x: np.ndarray, default: float) -> np.ndarray | float:
    """A per-channel parameter shaped to broadcast along the program's axis 1."""
    if not args.has(name):
        return default
    return np.asarray(args.param(name), dtype=x.dtype).reshape((1, 1, -1) + (1,) * (rank(x) - 2))


@register("batch_norm")
def _batch_norm(args: Args) -> np.ndarray:
    x = args.tensor("x")
    mean = _channel_vector(args, "mean", x, 0.0)
    variance = _channel_vector(args, "variance", x, 1.0)
    scale = _channel_vector(args, "gamma", x, 1.0) / np.sqrt(variance + args.scalar("epsilon", 1e-5))
    return (x - mean) * scale + _channel_vector(args, "beta", x, 0.0)


@register("instance_norm")
def _instance_norm(args: Args) -> np.ndarray:
    x = args.tensor("x")
    axes = tuple(range(3, x.ndim))  # the program's spatial axes: 2 onwards
    mean = x.mean(axis=axes, keepdims=True)
    variance = np.square(x - mean).mean(axis=axes, keepdims=True)
    normalized = (x - mean) / np.sqrt(variance + args.scalar("epsilon", 1e-5))
    return normalized * _channel_vector(args, "gamma", x, 1.0) + _channel_vector(args, "beta", x, 0.0)


@register("layer_norm")
def _layer_norm(args: Args) -> np.ndarray:
    x = args.tensor("x")
    program_axes = args.ints("axes", None)
    if program_axes is None:
        program_axes = list(range(rank(x)))
    axes = tuple(sorted(axis_of(a, rank(x)) for a in program_axes))
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    variance = np.square(centered).mean(axis=axes, keepdims=True)
    out = centered / np.sqrt(variance + args.scalar("epsilon", 1e-5))
    # gamma/beta have the shape of x over ``axes``: put their dimensions back at those axes
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    if args.has("gamma"):
        out = out * np.asarray(args.param("gamma"), dtype=x.dtype).reshape(shape)
    if args.has("beta"):
        out = out + np.asarray(args.param("beta"), dtype=x.dtype).reshape(shape)
    return out


@register("l2_norm")
def _l2_norm(args: Args) -> np.ndarray:
    x = args.tensor("x")
    axes = tuple(range(x.ndim - 3, x.ndim))  # the last three program axes; any before them are batch
    norm = np.sqrt(np.square(x).sum(axis=axes, keepdims=True) + args.scalar("epsilon", 1e-6))
    return x / norm
