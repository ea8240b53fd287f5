"""``linear`` and ``matmul`` (with ``transpose_x``/``transpose_y`` and numpy-style batch broadcasting)."""

from __future__ import annotations

import numpy as np

from .base import Args, align, rank, register


@register("linear")
def _linear(args: Args) -> np.ndarray:
    x = args.tensor("x")
    weight = np.asarray(args.param("weight"), dtype=x.dtype)  # (D_out, D_in)
    out = x @ weight.T
    if args.has("bias"):
        out += np.asarray(args.param("bias"), dtype=x.dtype)
    return out


@register("matmul")
def _matmul(args: Args) -> np.ndarray:
    x, y = args.tensor("x"), args.tensor("y")
    if args.scalar("transpose_x", False) and rank(x) >= 2:
        x = np.swapaxes(x, -1, -2)
    if args.scalar("transpose_y", False) and rank(y) >= 2:
        y = np.swapaxes(y, -1, -2)
    # a rank-1 operand is a row (x) or a column (y) whose unit axis is dropped afterwards, as in numpy
    vector_x, vector_y = rank(x) == 1, rank(y) == 1
    if vector_x:
        x = x[:, np.newaxis, :]
    if vector_y:
        y = y[..., np.newaxis]
    x, y = align(x, y)
    out = np.matmul(x, y)
    if vector_y:
        out = out[..., 0]
    if vector_x:
        out = out[..., 0, :] if not vector_y else out[..., 0]
    return out
