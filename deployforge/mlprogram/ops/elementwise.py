"""Elementwise ops: unary math, binary ops with numpy broadcasting, activations, ``clip``, ``cast``, ``softmax``."""

from __future__ import annotations

import numpy as np

from .base import Args, align, axis_of, rank, register

UNARY = {
    "abs": np.abs,
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "ceil": np.ceil,
    "cos": np.cos,
    "cosh": np.cosh,
    "exp": np.exp,
    "exp2": np.exp2,
    "floor": np.floor,
    "round": np.round,  # MIL rounds half to even, as numpy does
    "sign": np.sign,
    "sin": np.sin,
    "sinh": np.sinh,
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
    "logical_not": np.logical_not,
    "identity": lambda x: x,
}

BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.true_divide,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _unary(function):
    def run(args: Args) -> np.ndarray:
        return function(args.tensor("x"))

    return run


def _binary(function):
    def run(args: Args) -> np.ndarray:
        x, y = align(args.tensor("x"), args.tensor("y"))
        return function(x, y)

    return run


for _name, _function in UNARY.items():
    register(_name)(_unary(_function))
for _name, _function in BINARY.items():
    register(_name)(_binary(_function))


def erf(x: np.ndarray) -> np.ndarray:
    """The error function (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7), computed in float64."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(x) * (1.0 - poly * np.exp(-z * z))).astype(x.dtype)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid without overflow for large negative ``x``."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


@register("erf")
def _erf(args: Args) -> np.ndarray:
    return erf(args.tensor("x"))


@register("log")
def _log(args: Args) -> np.ndarray:
    return np.log(args.tensor("x") + args.scalar("epsilon", 1e-45))


@register("rsqrt")
def _rsqrt(args: Args) -> np.ndarray:
    return 1.0 / np.sqrt(args.tensor("x") + args.scalar("epsilon", 1e-12))


@register("inverse")
def _inverse(args: Args) -> np.ndarray:
    return 1.0 / (args.tensor("x") + args.scalar("epsilon", 1e-4))


@register("relu")
def _relu(args: Args) -> np.ndarray:
    return np.maximum(args.tensor("x"), 0)


@register("relu6")
def _relu6(args: Args) -> np.ndarray:
    return np.clip(args.tensor("x"), 0, 6)


@register("sigmoid")
def _sigmoid(args: Args) -> np.ndarray:
    return sigmoid(args.tensor("x"))


@register("silu")
def _silu(args: Args) -> np.ndarray:
    x = args.tensor("x")
    return x * sigmoid(x)


@register("softplus")
def _softplus(args: Args) -> np.ndarray:
    return np.logaddexp(args.tensor("x"), 0)


@register("softsign")
def _softsign(args: Args) -> np.ndarray:
    x = args.tensor("x")
    return x / (1 + np.abs(x))


@register("gelu")
def _gelu(args: Args) -> np.ndarray:
    x = args.tensor("x")
    mode = str(args.scalar("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1 + erf(x / np.sqrt(2).astype(x.dtype)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi).astype(x.dtype) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * sigmoid(1.702 * x)
    raise args.unsupported(f"gelu mode {mode!r}")


@register("sigmoid_hard")
def _sigmoid_hard(args: Args) -> np.ndarray:
    alpha, beta = args.scalar("alpha", 0.2), args.scalar("beta", 0.5)
    return np.clip(alpha * args.tensor("x") + beta, 0, 1)


@register("thresholded_relu")
def _thresholded_relu(args: Args) -> np.ndarray:
    x = args.tensor("x")
    return np.where(x > args.scalar("alpha", 1.0), x, 0).astype(x.dtype)


@register("leaky_relu")
def _leaky_relu(args: Args) -> np.ndarray:
    x = args.tensor("x")
    return np.where(x >= 0, x, args.scalar("alpha", 0.01) * x).astype(x.dtype)


@register("elu")
def _elu(args: Args) -> np.ndarray:
    x = args.tensor("x")
    return np.where(x > 0, x, args.scalar("alpha", 1.0) * np.expm1(np.minimum(x, 0))).astype(x.dtype)


@register("clamped_relu")
def _clamped_relu(args: Args) -> np.ndarray:
    x = args.tensor("x")
    alpha, beta = args.scalar("alpha", 0.0), args.scalar("beta", 6.0)
    return np.minimum(np.where(x >= 0, x, alpha * x), beta).astype(x.dtype)


@register("prelu")
def _prelu(args: Args) -> np.ndarray:
    x = args.tensor("x")  # (N, B, C, ...): alpha is per channel, axis 1 of the program
    alpha = np.asarray(args.param("alpha"), dtype=x.dtype).reshape((1, 1, -1) + (1,) * (rank(x) - 2))
    return np.where(x >= 0, x, alpha * x)


@register("clip")
def _clip(args: Args) -> np.ndarray:
    return np.clip(args.tensor("x"), args.scalar("alpha"), args.scalar("beta"))


@register("softmax")
def _softmax(args: Args) -> np.ndarray:
    x = args.tensor("x")
    axis = axis_of(args.scalar("axis", -1), rank(x))
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


@register("cast")
def _cast(args: Args) -> np.ndarray:
    # the executor converts to the declared output type (and rounds fp16); a float -> int cast truncates
    x = args.tensor("x")
    target = str(args.scalar("dtype"))
    if target.startswith(("int", "uint")) and np.issubdtype(x.dtype, np.floating):
        return np.trunc(x)
    return x


@register("select")
def _select(args: Args) -> np.ndarray:
    cond, a, b = align(args.tensor("cond"), args.tensor("a"), args.tensor("b"))
    return np.where(cond, a, b)
