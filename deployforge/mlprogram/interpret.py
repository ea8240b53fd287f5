"""The executor: runs the main function's ops in order, with FP16 emulation and a sample axis for batches.

FP16: an op whose output the program declares ``fp16`` is computed in float32 and its result rounded to the
nearest float16 (held as float32, which represents every float16 exactly); fp16 constants are exact already.
So an FP16 package is rounded at the same points the device rounds at, and judged on its real FP16 error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import MLProgramError, OpExecutionError, UnsupportedOpError
from .ops import OPS, Args
from .program import NUMPY_TYPES, Operation, ProgramSpec, ValueType, read_spec

# ops whose results are elements of their inputs (moved, selected or compared): in an fp16 program their inputs are
# fp16 already, so their results need no rounding (skipping it saves a float16 round trip per element)
SELECTING_OPS = frozenset(
    {
        "concat",
        "expand_dims",
        "flatten2d",
        "gather",
        "identity",
        "max_pool",
        "maximum",
        "minimum",
        "pixel_shuffle",
        "pixel_unshuffle",
        "reduce_max",
        "reduce_min",
        "relu",
        "reshape",
        "reverse",
        "slice_by_index",
        "slice_by_size",
        "split",
        "squeeze",
        "stack",
        "tile",
        "transpose",
        "upsample_nearest_neighbor",
    }
)


class Program:
    """A loaded ML program, ready to run on numpy inputs.

    Args:
        spec: the parsed main function (see :func:`load_program`).
        source: where it was read from (for messages).

    Raises:
        UnsupportedOpError: an op type the interpreter does not implement (named with its position and output).
    """

    def __init__(self, spec: ProgramSpec, source: str = "") -> None:
        self.spec = spec
        self.source = source
        for op in spec.operations:
            if op.type not in OPS:
                raise UnsupportedOpError(op.type, op.position, op.outputs[0], f"in {source or 'the program'}")
        # fp16 constants widened once: every float16 is exact in float32, and numpy's float16 math is slow
        self._constants = {
            name: value.astype(np.float32) if value.dtype == np.float16 else value
            for name, value in spec.constants.items()
        }
        last_use: dict[str, int] = {}
        for index, op in enumerate(spec.operations):
            for names in op.inputs.values():
                for name in names:
                    last_use[name] = index
        self._release: dict[int, list[str]] = {}
        for name, index in last_use.items():
            if name not in spec.outputs:
                self._release.setdefault(index, []).append(name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.spec.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.outputs

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's fixed shape (batch included, as exported)."""
        return {name: tuple(int(d) for d in vtype.shape) for name, vtype in self.spec.inputs.items()}

    @property
    def operations(self) -> list[Operation]:
        """The ops that run (consts excluded), in order."""
        return self.spec.operations

    @property
    def op_types(self) -> set[str]:
        return {op.type for op in self.spec.operations}

    @property
    def is_fp16(self) -> bool:
        """Whether any op computes in fp16."""
        return any(t.is_fp16 for op in self.spec.operations for t in op.output_types)

    def value_type(self, name: str) -> ValueType:
        """The declared type of value ``name`` (an input or any op output)."""
        return self.spec.inputs.get(name) or self.spec.value_types[name]

    def run(
        self, inputs: Mapping[str, np.ndarray], keep: bool = False, chunk: int | None = None
    ) -> dict[str, np.ndarray]:
        """Run the program.

        Each input is either of the exported shape (one sample) or a stack of N samples along the batch axis
        of a batch-1 program (``(N, 3, H, W)`` for an exported ``(1, 3, H, W)``). N samples run through in one
        pass: every value carries a sample axis ahead of the program's own (see :mod:`.ops.base`).

        Args:
            inputs: input name -> array.
            keep: also return every intermediate value, by its MIL value name.
            chunk: run at most this many samples per pass (bounds memory for large N, above all with ``keep``).

        Returns:
            Output name (and with ``keep``, every value name) -> array: the samples stacked on the batch axis;
            fp16 values as float16, the others in their declared type.

        Raises:
            MLProgramError: a missing or misshapen input.
            OpExecutionError: an op failed or disagrees with its declared output shape (the op is named).
        """
        batch = self._bind(inputs)
        samples = next(iter(batch.values())).shape[0]
        if chunk is None or chunk >= samples:
            return self._merge(self._execute(batch, keep), samples)
        parts = [
            self._merge(self._execute({n: v[i : i + chunk] for n, v in batch.items()}, keep), samples)
            for i in range(0, samples, chunk)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _bind(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.spec.inputs) - set(inputs)
        if missing:
            raise MLProgramError(f"missing inputs {sorted(missing)} (the program takes {list(self.spec.inputs)})")
        bound, counts = {}, set()
        for name, vtype in self.spec.inputs.items():
            array = np.asarray(inputs[name])
            shape = tuple(vtype.shape)
            if array.shape == shape:
                array = array[np.newaxis]
            elif array.ndim == len(shape) and shape[0] == 1 and array.shape[1:] == shape[1:]:
                array = array[:, np.newaxis]
            else:
                raise MLProgramError(f"input {name!r} has shape {array.shape}; the program takes {shape}")
            counts.add(array.shape[0])
            bound[name] = _as_declared(array, vtype)
        if len(counts) > 1:
            raise MLProgramError(f"inputs hold different numbers of samples: {sorted(counts)}")
        return bound

    def _execute(self, values: dict[str, np.ndarray], keep: bool) -> dict[str, np.ndarray]:
        samples = next(iter(values.values())).shape[0]
        kept: dict[str, np.ndarray] = dict(values) if keep else {}
        for index, op in enumerate(self.spec.operations):
            try:
                result = OPS[op.type](Args(op, values, self._constants))
            except (UnsupportedOpError, OpExecutionError):
                raise
            except Exception as exc:
                raise OpExecutionError(f"{op.where} failed: {type(exc).__name__}: {exc}") from exc
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(op.outputs):
                raise OpExecutionError(
                    f"{op.where} gave {len(results)} outputs, the program declares {len(op.outputs)}"
                )
            for name, value, vtype in zip(op.outputs, results, op.output_types, strict=True):
                value = _conform(np.asarray(value), vtype, samples, op, round_fp16=op.type not in SELECTING_OPS)
                values[name] = value
                if keep:
                    kept[name] = value
            for name in self._release.get(index, ()):
                values.pop(name, None)
        out = kept if keep else {}
        for name in self.spec.outputs:
            out[name] = values[name] if name in values else np.broadcast_to(self._constants[name], (samples,))
        return out

    def _merge(self, values: dict[str, np.ndarray], samples: int) -> dict[str, np.ndarray]:
        merged = {}
        for name, value in values.items():
            declared = self.value_type(name)
            value = value.astype(np.float16) if declared.is_fp16 else value
            merged[name] = value.reshape((-1,) + value.shape[2:]) if value.ndim >= 2 else value
        return merged


def _as_declared(value: np.ndarray, vtype: ValueType, round_fp16: bool = True) -> np.ndarray:
    """``value`` in its declared type: fp16 rounded (held as float32), others converted."""
    if vtype.dtype == "FLOAT16" and round_fp16:
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as on the device
            return value.astype(np.float16).astype(np.float32)
    target = np.dtype(np.float32) if vtype.dtype == "FLOAT16" else NUMPY_TYPES.get(vtype.dtype)
    if target is None or target == np.dtype(object):
        raise MLProgramError(f"values of type {vtype.dtype} are not supported")
    return value.astype(target, copy=False)


def _conform(value: np.ndarray, vtype: ValueType, samples: int, op: Operation, round_fp16: bool) -> np.ndarray:
    if value.ndim == 0 or value.shape[0] != samples:
        value = np.broadcast_to(value, (samples,) + value.shape[1:]) if value.ndim else np.full((samples,), value)
    declared = vtype.shape
    actual = value.shape[1:]
    if len(actual) != len(declared) or any(d is not None and d != a for d, a in zip(declared, actual, strict=True)):
        raise OpExecutionError(f"{op.where} produced shape {actual}, the program declares {declared}")
    return _as_declared(value, vtype, round_fp16)


def load_program(path: Path | str) -> Program:
    """Read the ``.mlpackage`` at ``path`` into a runnable :class:`Program`.

    Raises:
        MLProgramError: the spec is unreadable or not an ML program.
        WeightFileError: the weight file is truncated or tampered with (bad header, sentinel, offset or size).
        UnsupportedOpError: the program uses an op the interpreter does not implement.
    """
    return Program(read_spec(Path(path)), source=str(path))
