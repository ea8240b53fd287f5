"""Spatial resizing of the last two axes: ``upsample_bilinear``, ``resize_bilinear``, nearest-neighbour upsampling.

Bilinear resizing samples the input on a grid of fractional positions, one grid per MIL sampling mode
(``resize_bilinear``'s docstring); ``upsample_bilinear``'s flags select among the same grids.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Args, register


def sampling_grid(source: int, size: int, mode: str) -> np.ndarray:
    """Input positions (in ``[0, source - 1]``) of ``size`` output samples for a MIL ``sampling_mode``."""
    i = np.arange(size, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size == 1:
            grid = np.full(1, (source - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            grid = i * (source - 1) / (size - 1)
    elif mode == "DEFAULT":  # asymmetric: i * in / out
        grid = i * source / size
    elif mode == "UNALIGN_CORNERS":  # half-pixel centres
        grid = (i + 0.5) * source / size - 0.5
    elif mode == "OFFSET_CORNERS":
        delta = max(1, source - 1) / size
        grid = 0.5 * delta + i * delta
    else:
        raise ValueError(f"sampling mode {mode!r}")
    return np.clip(grid, 0, source - 1)


def _interpolate(x: np.ndarray, axis: int, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at the fractional positions ``grid``."""
    low = np.floor(grid).astype(np.int64)
    high = np.minimum(low + 1, x.shape[axis] - 1)
    shape = [1] * x.ndim
    shape[axis] = grid.size
    weight = (grid - low).astype(x.dtype).reshape(shape)
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


def _bilinear(x: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    out = _interpolate(x, x.ndim - 2, sampling_grid(x.shape[-2], height, mode))
    return _interpolate(out, x.ndim - 1, sampling_grid(x.shape[-1], width, mode))


@register("upsample_bilinear")
def _upsample_bilinear(args: Args) -> np.ndarray:
    x = args.tensor("x")
    align_corners = bool(args.scalar("align_corners", True))
    half_pixel = bool(args.scalar("half_pixel_centers", not align_corners))
    if align_corners:
        mode = "STRICT_ALIGN_CORNERS"
    else:
        mode = "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    height = math.floor(x.shape[-2] * args.scalar("scale_factor_height", 1))
    width = math.floor(x.shape[-1] * args.scalar("scale_factor_width", 1))
    return _bilinear(x, height, width, mode)


@register("resize_bilinear")
def _resize_bilinear(args: Args) -> np.ndarray:
    x = args.tensor("x")
    height, width = int(args.scalar("target_size_height", 1)), int(args.scalar("target_size_width", 1))
    try:
        return _bilinear(x, height, width, str(args.scalar("sampling_mode", "DEFAULT")))
    except ValueError as exc:
        raise args.unsupported(str(exc)) from exc


@register("upsample_nearest_neighbor")
def _upsample_nearest(args: Args) -> np.ndarray:
    x = args.tensor("x")
    for axis, name in ((x.ndim - 2, "scale_factor_height"), (x.ndim - 1, "scale_factor_width")):
        source = x.shape[axis]
        size = math.floor(source * args.scalar(name, 1))
        index = np.minimum(np.floor(np.arange(size) * source / size).astype(np.int64), source - 1)
        x = np.take(x, index, axis=axis)
    return x
