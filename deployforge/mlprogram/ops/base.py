"""What every op implementation receives, and the registry that maps MIL op types to implementations.

Batching: every value computed at run time carries one extra leading axis, the *sample* axis, in front of the
program's own dimensions (a program exported with batch 1 holds ``(N, 1, C, H, W)`` for N images). Ops see
their operands with that axis (constants get a sample axis of size 1, which broadcasts) and map their axis
parameters past it, so one pass runs N images through a batch-1 program whatever its reshapes and transposes
do to the program's own batch axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import UnsupportedOpError
from ..program import Operation

OpResult = np.ndarray | tuple[np.ndarray, ...]
OpFunction = Callable[["Args"], OpResult]
OPS: dict[str, OpFunction] = {}
_REQUIRED = object()


def register(*names: str) -> Callable[[OpFunction], OpFunction]:
    """Register the decorated function as the implementation of the MIL op types ``names``."""

    def decorate(function: OpFunction) -> OpFunction:
        for name in names:
            if name in OPS:
                raise ValueError(f"op {name!r} is registered twice")
            OPS[name] = function
        return function

    return decorate


class Args:
    """An op's operands: run-time tensors (with the sample axis) and constant parameters (without).

    Args:
        op: the operation.
        values: run-time values by name (each with its sample axis).
        constants: the program's constants by name (no sample axis; fp16 already widened to float32).
    """

    def __init__(self, op: Operation, values: Mapping[str, np.ndarray], constants: Mapping[str, np.ndarray]) -> None:
        self.op = op
        self._values = values
        self._constants = constants

    def has(self, name: str) -> bool:
        """Whether the op binds parameter ``name``."""
        return bool(self.op.inputs.get(name))

    def _lookup(self, value_name: str) -> np.ndarray:
        if value_name in self._values:
            return self._values[value_name]
        return self._constants[value_name][np.newaxis]

    def tensor(self, name: str) -> np.ndarray:
        """Operand ``name`` with its sample axis first."""
        names = self.op.inputs.get(name)
        if not names:
            raise self.unsupported(f"required input {name!r} is not bound")
        return self._lookup(names[0])

    def tensors(self, name: str) -> list[np.ndarray]:
        """A variadic operand (``concat``'s ``values``), each with its sample axis."""
        return [self._lookup(value_name) for value_name in self.op.inputs.get(name, ())]

    def param(self, name: str, default: Any = _REQUIRED) -> Any:
        """Constant parameter ``name`` as a numpy value (no sample axis), or ``default`` when unbound.

        Raises:
            UnsupportedOpError: the parameter is required and unbound, or computed at run time.
        """
        names = self.op.inputs.get(name)
        if not names:
            if default is _REQUIRED:
                raise self.unsupported(f"required parameter {name!r} is not bound")
            return default
        if names[0] not in self._constants:
            raise self.unsupported(f"parameter {name!r} is computed at run time; only constant ones are supported")
        return self._constants[names[0]]

    def scalar(self, name: str, default: Any = _REQUIRED) -> Any:
        """A scalar constant parameter as a Python value."""
        value = self.param(name, default)
        return value.item() if isinstance(value, np.ndarray) else value

    def ints(self, name: str, default: Any = _REQUIRED) -> list[int] | None:
        """A constant integer-vector parameter as a list (``default`` when unbound)."""
        value = self.param(name, default)
        return None if value is None else [int(v) for v in np.ravel(value)]

    def unsupported(self, detail: str) -> UnsupportedOpError:
        """An error naming this op, its position and output, with ``detail``."""
        return UnsupportedOpError(self.op.type, self.op.position, self.op.outputs[0], detail)


def rank(x: np.ndarray) -> int:
    """The program's rank of ``x`` (without the sample axis)."""
    return x.ndim - 1


def axis_of(axis: int, program_rank: int) -> int:
    """Array axis of program axis ``axis`` (negative counts from the end) once the sample axis leads."""
    if not -program_rank <= axis < max(program_rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {program_rank}")
    return (axis % max(program_rank, 1)) + 1


def align(*arrays: np.ndarray) -> list[np.ndarray]:
    """Give ``arrays`` one program rank (unit axes after the sample axis) so numpy broadcasting matches MIL's."""
    top = max(rank(a) for a in arrays)
    return [a.reshape(a.shape[:1] + (1,) * (top - rank(a)) + a.shape[1:]) for a in arrays]


def per_sample(x: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Fold the sample axis into the program's batch axis (axis 0); return the folded array and the unfold."""
    samples = x.shape[0]
    folded = x.reshape((samples * x.shape[1],) + x.shape[2:])

    def unfold(y: np.ndarray) -> np.ndarray:
        return y.reshape((samples, y.shape[0] // samples) + y.shape[1:])

    return folded, unfold
