"""``conv`` (1-D to 3-D, groups, dilations, every padding mode) and the pools, on unfolded windows.

A general conv unfolds its input into patches (``sliding_window_view``) and multiplies them by the weight
matrix, one matmul per group batch; a depthwise conv (one input channel per group) is a sum over kernel taps
of shifted slices times a per-channel weight, which avoids unfolding the input ``K`` times over.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Args, per_sample, register


def spatial_padding(
    pad_type: str,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    custom: list[int] | None,
) -> list[tuple[int, int]]:
    """(before, after) padding of each spatial dimension, as MIL's ``aggregated_pad`` defines the modes.

    ``same`` pads so that ``out = ceil(in / stride)``, an odd total's extra element after (bottom/right);
    ``same_lower`` puts it before (top/left); ``custom`` reads ``pad`` as before/after pairs per dimension.
    """
    if pad_type == "valid":
        return [(0, 0)] * len(spatial)
    if pad_type == "custom":
        pads = custom or [0] * (2 * len(spatial))
        return [(pads[2 * i], pads[2 * i + 1]) for i in range(len(spatial))]
    if pad_type in ("same", "same_lower"):
        result = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            result.append((small, large) if pad_type == "same" else (large, small))
        return result
    raise ValueError(f"pad_type {pad_type!r}")


def _conv_settings(args: Args, spatial_rank: int, kernel: tuple[int, ...], spatial: tuple[int, ...]):
    strides = tuple(args.ints("strides", None) or [1] * spatial_rank)
    dilations = tuple(args.ints("dilations", None) or [1] * spatial_rank)
    pad_type = str(args.scalar("pad_type", "valid"))
    try:
        pads = spatial_padding(pad_type, spatial, kernel, strides, dilations, args.ints("pad", None))
    except ValueError as exc:
        raise args.unsupported(str(exc)) from exc
    return strides, dilations, pads


def _output_size(size: int, k: int, s: int, d: int) -> int:
    return (size - ((k - 1) * d + 1)) // s + 1


@register("conv")
def _conv(args: Args) -> np.ndarray:
    x, unfold = per_sample(args.tensor("x"))  # (B, C, *S)
    weight = np.asarray(args.param("weight"), dtype=x.dtype)  # (O, C/groups, *K)
    groups = int(args.scalar("groups", 1))
    spatial_rank = x.ndim - 2
    kernel = weight.shape[2:]
    strides, dilations, pads = _conv_settings(args, spatial_rank, kernel, x.shape[2:])
    x = np.pad(x, [(0, 0), (0, 0), *pads]) if any(p != (0, 0) for p in pads) else x
    out_spatial = tuple(
        _output_size(n, k, s, d) for n, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True)
    )
    batch, channels = x.shape[:2]
    out_channels, group_channels = weight.shape[:2]
    if group_channels * groups != channels:
        raise args.unsupported(f"weight {weight.shape} does not fit {channels} input channels in {groups} groups")

    if group_channels == 1 and groups > 1:
        out = _depthwise(x, weight, groups, out_spatial, strides, dilations)
    else:
        out = _unfolded(x, weight, groups, out_spatial, strides, dilations)
    out = out.reshape((batch, out_channels) + out_spatial)
    if args.has("bias"):
        out += np.asarray(args.param("bias"), dtype=x.dtype).reshape((1, -1) + (1,) * spatial_rank)
    return unfold(out)


def _tap(x: np.ndarray, tap: tuple[int, ...], out_spatial, strides, dilations) -> np.ndarray:
    """The input elements kernel tap ``tap`` meets at every output position."""
    index = tuple(
        slice(t * d, t * d + (n - 1) * s + 1, s)
        for t, n, s, d in zip(tap, out_spatial, strides, dilations, strict=True)
    )
    return x[(slice(None), slice(None), *index)]


def _depthwise(x, weight, groups, out_spatial, strides, dilations) -> np.ndarray:
    multiplier = weight.shape[0] // groups
    if multiplier > 1:  # output channel o reads input channel o // multiplier
        x = np.repeat(x, multiplier, axis=1)
    out = np.zeros(x.shape[:2] + out_spatial, dtype=x.dtype)
    broadcast = (1, -1) + (1,) * len(out_spatial)
    for tap in itertools.product(*(range(k) for k in weight.shape[2:])):
        out += _tap(x, tap, out_spatial, strides, dilations) * weight[(slice(None), 0, *tap)].reshape(broadcast)
    return out


def _unfolded(x, weight, groups, out_spatial, strides, dilations) -> np.ndarray:
    batch, channels = x.shape[:2]
    spatial_rank = len(out_spatial)
    kernel = weight.shape[2:]
    if all(k == 1 for k in kernel):
        patches = _tap(x, (0,) * spatial_rank, out_spatial, strides, dilations)[:, :, np.newaxis]
    else:
        extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))
        axes = tuple(range(2, 2 + spatial_rank))
        windows = sliding_window_view(x, extent, axis=axes)  # (B, C, *positions, *extent)
        take = tuple(slice(None, (n - 1) * s + 1, s) for n, s in zip(out_spatial, strides, strict=True))
        take += tuple(slice(None, None, d) for d in dilations)
        windows = windows[(slice(None), slice(None), *take)]  # (B, C, *out, *K)
        # (B, C, *K, *out): channel and taps lead, positions trail, so the product lands as (O, positions)
        order = (0, 1, *range(2 + spatial_rank, 2 + 2 * spatial_rank), *range(2, 2 + spatial_rank))
        patches = windows.transpose(order)
    positions = math.prod(out_spatial)
    depth = (channels // groups) * math.prod(kernel)
    patches = patches.reshape(batch, groups, depth, positions)
    matrix = weight.reshape(groups, weight.shape[0] // groups, depth)
    return np.matmul(matrix, patches)  # (B, groups, O/groups, positions)


def _pool(args: Args, kind: str) -> np.ndarray:
    x, unfold = per_sample(args.tensor("x"))
    kernel = tuple(args.ints("kernel_sizes"))
    spatial_rank = len(kernel)
    spatial = x.shape[-spatial_rank:]
    strides, _, pads = _conv_settings(args, spatial_rank, kernel, spatial)
    ceil_mode = bool(args.scalar("ceil_mode", False))
    out_spatial, extra = [], []
    for size, k, s, (before, after) in zip(spatial, kernel, strides, pads, strict=True):
        padded = size + before + after
        count = (padded - k) // s + 1
        if ceil_mode:
            count = (padded - k + s - 1) // s + 1
            if (count - 1) * s >= size + before:  # the last window would start in the padding only
                count -= 1
        out_spatial.append(count)
        extra.append(max(0, (count - 1) * s + k - padded))
    full = [(0, 0)] * (x.ndim - spatial_rank) + [(b, a + e) for (b, a), e in zip(pads, extra, strict=True)]
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x, full, constant_values=fill)
    axes = tuple(range(x.ndim - spatial_rank, x.ndim))
    take = tuple(slice(None, (n - 1) * s + 1, s) for n, s in zip(out_spatial, strides, strict=True))
    windows = sliding_window_view(padded, kernel, axis=axes)[(Ellipsis, *take) + (slice(None),) * spatial_rank]
    window_axes = tuple(range(-spatial_rank, 0))
    if kind == "max":
        return unfold(windows.max(axis=window_axes))
    if kind == "l2":
        return unfold(np.sqrt(np.square(windows).sum(axis=window_axes)))
    # average: each window's divisor counts its input elements, and the declared padding unless it is excluded;
    # the ceil-mode overhang never counts
    exclude = bool(args.scalar("exclude_padding_from_average", False))
    counted = np.pad(np.ones(spatial, dtype=x.dtype), pads, constant_values=0.0 if exclude else 1.0)
    counted = np.pad(counted, [(0, e) for e in extra])
    counts = sliding_window_view(counted, kernel)[take].sum(axis=window_axes)
    return unfold(windows.sum(axis=window_axes) / counts)


@register("max_pool")
def _max_pool(args: Args) -> np.ndarray:
    return _pool(args, "max")


@register("avg_pool")
def _avg_pool(args: Args) -> np.ndarray:
    return _pool(args, "avg")


@register("l2_pool")
def _l2_pool(args: Args) -> np.ndarray:
    return _pool(args, "l2")
