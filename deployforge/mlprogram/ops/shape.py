"""Ops that move data without arithmetic: reshape, transpose, concat, split, slices, squeeze, pad, tile..."""

from __future__ import annotations

import numpy as np

from .base import Args, axis_of, rank, register


@register("reshape")
def _reshape(args: Args) -> np.ndarray:
    x = args.tensor("x")
    shape = args.ints("shape")
    # 0 keeps the input's dimension at that position (only when the ranks agree); -1 is inferred by numpy
    if len(shape) == rank(x):
        shape = [x.shape[i + 1] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape((x.shape[0], *shape))


@register("transpose")
def _transpose(args: Args) -> np.ndarray:
    x = args.tensor("x")
    perm = [axis_of(p, rank(x)) for p in args.ints("perm")]
    return x.transpose((0, *perm))


@register("concat")
def _concat(args: Args) -> np.ndarray:
    values = args.tensors("values")
    samples = max(v.shape[0] for v in values)
    values = [np.broadcast_to(v, (samples,) + v.shape[1:]) for v in values]
    axis = axis_of(args.scalar("axis"), rank(values[0]))
    if args.scalar("interleave", False):
        # the i-th slice of every input in turn: stack on a new axis after ``axis`` and merge the two
        stacked = np.stack(values, axis=axis + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@register("stack")
def _stack(args: Args) -> np.ndarray:
    values = args.tensors("values")
    samples = max(v.shape[0] for v in values)
    values = [np.broadcast_to(v, (samples,) + v.shape[1:]) for v in values]
    return np.stack(values, axis=axis_of(args.scalar("axis"), rank(values[0]) + 1))


@register("split")
def _split(args: Args) -> tuple[np.ndarray, ...]:
    x = args.tensor("x")
    axis = axis_of(args.scalar("axis"), rank(x))
    sizes = args.ints("split_sizes", None)
    if sizes is None:
        parts = int(args.scalar("num_splits"))
        size = -(-x.shape[axis] // parts)  # ceil: the last part may be smaller
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@register("slice_by_index")
def _slice_by_index(args: Args) -> np.ndarray:
    x = args.tensor("x")
    n = rank(x)
    begin, end = args.ints("begin"), args.ints("end")
    stride = args.ints("stride", None) or [1] * n
    begin_mask = args.ints("begin_mask", None) or [0] * n
    end_mask = args.ints("end_mask", None) or [0] * n
    squeeze_mask = args.ints("squeeze_mask", None) or [0] * n
    index: list[slice | int] = [slice(None)]
    for i in range(n):
        if squeeze_mask[i]:
            index.append(begin[i])
            continue
        start = None if begin_mask[i] else begin[i]
        stop = None if end_mask[i] else end[i]
        index.append(slice(start, stop, stride[i]))
    return x[tuple(index)]


@register("slice_by_size")
def _slice_by_size(args: Args) -> np.ndarray:
    x = args.tensor("x")
    begin, size = args.ints("begin"), args.ints("size")
    index = [slice(None)]
    for i, (b, s) in enumerate(zip(begin, size, strict=True)):
        start = b % x.shape[i + 1] if b < 0 else b
        index.append(slice(start, None if s == -1 else start + s))
    return x[tuple(index)]


@register("squeeze")
def _squeeze(args: Args) -> np.ndarray:
    x = args.tensor("x")
    program_axes = args.ints("axes", None)
    if program_axes is None:
        axes = tuple(i for i in range(1, x.ndim) if x.shape[i] == 1)
    else:
        axes = tuple(axis_of(a, rank(x)) for a in program_axes)
    return np.squeeze(x, axis=axes)


@register("expand_dims")
def _expand_dims(args: Args) -> np.ndarray:
    x = args.tensor("x")
    out_rank = rank(x) + len(args.ints("axes"))
    axes = sorted(axis_of(a, out_rank) for a in args.ints("axes"))
    for a in axes:
        x = np.expand_dims(x, a)
    return x


@register("flatten2d")
def _flatten2d(args: Args) -> np.ndarray:
    x = args.tensor("x")
    axis = args.scalar("axis", 1)
    axis = axis + rank(x) if axis < 0 else axis
    return x.reshape((x.shape[0], int(np.prod(x.shape[1 : axis + 1])), -1))


@register("pad")
def _pad(args: Args) -> np.ndarray:
    x = args.tensor("x")
    pads = args.ints("pad")
    # ``pad`` covers the last len(pad)/2 axes, before/after per axis
    widths = [(0, 0)] * (x.ndim - len(pads) // 2) + [(pads[2 * i], pads[2 * i + 1]) for i in range(len(pads) // 2)]
    mode = str(args.scalar("mode", "constant"))
    if mode == "constant":
        return np.pad(x, widths, constant_values=args.scalar("constant_val", 0.0))
    if mode in ("reflect", "replicate"):
        return np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge")
    raise args.unsupported(f"pad mode {mode!r}")


@register("tile")
def _tile(args: Args) -> np.ndarray:
    return np.tile(args.tensor("x"), [1, *args.ints("reps")])


@register("pixel_shuffle")
def _pixel_shuffle(args: Args) -> np.ndarray:
    x = args.tensor("x")  # (N, B, C*r*r, H, W) -> (N, B, C, H*r, W*r)
    r = int(args.scalar("upscale_factor"))
    n, b, c, h, w = x.shape
    y = x.reshape(n, b, c // (r * r), r, r, h, w).transpose(0, 1, 2, 5, 3, 6, 4)
    return y.reshape(n, b, c // (r * r), h * r, w * r)


@register("pixel_unshuffle")
def _pixel_unshuffle(args: Args) -> np.ndarray:
    x = args.tensor("x")  # (N, B, C, H*r, W*r) -> (N, B, C*r*r, H, W)
    r = int(args.scalar("downscale_factor"))
    n, b, c, h, w = x.shape
    y = x.reshape(n, b, c, h // r, r, w // r, r).transpose(0, 1, 2, 4, 6, 3, 5)
    return y.reshape(n, b, c * r * r, h // r, w // r)


@register("gather")
def _gather(args: Args) -> np.ndarray:
    x = args.tensor("x")
    indices = np.asarray(args.param("indices")).astype(np.int64)
    axis = axis_of(args.scalar("axis", 0), rank(x))
    if args.scalar("batch_dims", 0):
        raise args.unsupported("gather with batch_dims")
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return np.take(x, indices, axis=axis)


@register("reverse")
def _reverse(args: Args) -> np.ndarray:
    x = args.tensor("x")
    program_axes = args.ints("axes", None)
    axes = range(1, x.ndim) if program_axes is None else [axis_of(a, rank(x)) for a in program_axes]
    return np.flip(x, axis=tuple(axes))
