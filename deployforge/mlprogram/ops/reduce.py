"""Reductions over ``axes`` (all axes when unbound; negative counts from the end), with ``keep_dims``."""

from __future__ import annotations

import numpy as np

from .base import Args, axis_of, rank, register

REDUCTIONS = {
    "reduce_mean": lambda x, axes: x.mean(axis=axes, keepdims=True),
    "reduce_sum": lambda x, axes: x.sum(axis=axes, keepdims=True),
    "reduce_max": lambda x, axes: x.max(axis=axes, keepdims=True),
    "reduce_min": lambda x, axes: x.min(axis=axes, keepdims=True),
    "reduce_prod": lambda x, axes: x.prod(axis=axes, keepdims=True),
    "reduce_l1_norm": lambda x, axes: np.abs(x).sum(axis=axes, keepdims=True),
    "reduce_l2_norm": lambda x, axes: np.sqrt(np.square(x).sum(axis=axes, keepdims=True)),
    "reduce_sum_square": lambda x, axes: np.square(x).sum(axis=axes, keepdims=True),
    "reduce_log_sum": lambda x, axes: np.log(x.sum(axis=axes, keepdims=True)),
    "reduce_log_sum_exp": lambda x, axes: _log_sum_exp(x, axes),
}


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    top = x.max(axis=axes, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=axes, keepdims=True))


def _reduction(function):
    def run(args: Args) -> np.ndarray:
        x = args.tensor("x")
        program_axes = args.ints("axes", None)
        if program_axes is None:
            program_axes = list(range(rank(x)))
        axes = tuple(sorted({axis_of(a, rank(x)) for a in program_axes}))
        out = function(x, axes)
        return out if args.scalar("keep_dims", False) else np.squeeze(out, axis=axes)

    return run


for _name, _function in REDUCTIONS.items():
    register(_name)(_reduction(_function))


def _arg_reduction(function):
    def run(args: Args) -> np.ndarray:
        x = args.tensor("x")
        axis = axis_of(args.scalar("axis", -1), rank(x))
        out = function(x, axis=axis, keepdims=True)
        return out if args.scalar("keep_dims", False) else np.squeeze(out, axis=axis)

    return run


register("reduce_argmax")(_arg_reduction(np.argmax))
register("reduce_argmin")(_arg_reduction(np.argmin))
