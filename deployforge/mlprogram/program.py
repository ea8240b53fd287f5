"""Reading an ``.mlpackage``: the ML program from its protobuf spec, constants decoded (blobs via :mod:`.blob`).

The spec is parsed with coremltools' generated proto classes (``Model_pb2``/``MIL_pb2``); nothing of the MIL
builder or converter runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .blob import WeightFile
from .errors import MLProgramError

DEFAULT_MODEL_PATH = Path("Data/com.apple.CoreML/model.mlmodel")
MODEL_PATH_PREFIX = "@model_path/"

# MIL DataType names -> numpy; fp16 is held as float32 at run time (see FP16 in interpret.py)
NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    "FLOAT16": np.dtype(np.float16),
    "FLOAT32": np.dtype(np.float32),
    "FLOAT64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "STRING": np.dtype(object),
}


@dataclass(frozen=True)
class ValueType:
    """A tensor type as the program declares it.

    Attributes:
        dtype: MIL data type name (``FLOAT16``, ``INT32``...).
        shape: the dimensions, ``None`` where a dimension is not a constant.
    """

    dtype: str
    shape: tuple[int | None, ...]

    @property
    def is_fp16(self) -> bool:
        return self.dtype == "FLOAT16"


@dataclass(frozen=True)
class Operation:
    """One op of the main block.

    Attributes:
        position: index in the block.
        type: MIL op type (``conv``).
        inputs: parameter name -> the names of the values bound to it (several for a variadic input).
        outputs: output value names, in order.
        output_types: the declared type of each output.
    """

    position: int
    type: str
    inputs: Mapping[str, tuple[str, ...]]
    outputs: tuple[str, ...]
    output_types: tuple[ValueType, ...]

    @property
    def where(self) -> str:
        return f"op #{self.position} {self.type!r} (output {self.outputs[0]!r})"


@dataclass
class ProgramSpec:
    """The main function of an ML program, with every constant decoded.

    Attributes:
        inputs: input name -> declared type.
        outputs: output value names.
        operations: the non-const ops, in program order.
        constants: value name -> numpy value (const op outputs and immediate arguments); fp16 stays float16.
        value_types: value name -> declared type, for every op output.
        opset: the block's opset (``CoreML6`` for iOS 16).
    """

    inputs: dict[str, ValueType]
    outputs: tuple[str, ...]
    operations: list[Operation]
    constants: dict[str, np.ndarray]
    value_types: dict[str, ValueType] = field(default_factory=dict)
    opset: str = ""


def model_spec_path(package: Path) -> Path:
    """The protobuf spec inside ``package``: the root item of ``Manifest.json``, else the default path.

    Raises:
        MLProgramError: no spec file is there.
    """
    manifest = package / "Manifest.json"
    candidate = package / DEFAULT_MODEL_PATH
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            root = data["itemInfoEntries"][data["rootModelIdentifier"]]
            candidate = package / "Data" / root["path"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MLProgramError(f"{manifest} is not a valid package manifest: {exc!r}") from exc
    if not candidate.is_file():
        raise MLProgramError(f"{package} has no model spec at {candidate.relative_to(package)}")
    return candidate


def read_spec(package: Path) -> ProgramSpec:
    """Parse ``package`` (an ``.mlpackage`` directory) into its main function's ops and decoded constants.

    Raises:
        MLProgramError: the spec does not parse or is not an ML program with a ``main`` function.
        WeightFileError: a blob the program refers to is missing or malformed.
    """
    from coremltools.proto import MIL_pb2, Model_pb2  # noqa: F401  (MIL_pb2 registers the nested types)
    from google.protobuf.message import DecodeError

    package = Path(package)
    spec_path = model_spec_path(package)
    model = Model_pb2.Model()
    try:
        model.ParseFromString(spec_path.read_bytes())
    except DecodeError as exc:
        raise MLProgramError(f"{spec_path} does not parse as a Core ML spec: {exc}") from exc
    if model.WhichOneof("Type") != "mlProgram":
        raise MLProgramError(f"{package} holds a {model.WhichOneof('Type')!r} model, not an ML program")
    if "main" not in model.mlProgram.functions:
        raise MLProgramError(f"{package}'s program has no 'main' function")
    function = model.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    reader = _ValueReader(spec_path.parent)

    inputs = {named.name: _value_type(named.type) for named in function.inputs}
    constants: dict[str, np.ndarray] = {}
    value_types: dict[str, ValueType] = {}
    operations: list[Operation] = []
    for position, op in enumerate(block.operations):
        outputs = tuple(named.name for named in op.outputs)
        types = tuple(_value_type(named.type) for named in op.outputs)
        value_types.update(zip(outputs, types, strict=True))
        if op.type == "const":
            constants[outputs[0]] = reader.decode(op.attributes["val"], f"const {outputs[0]!r}")
            continue
        bound: dict[str, tuple[str, ...]] = {}
        for param, argument in op.inputs.items():
            names = []
            for index, binding in enumerate(argument.arguments):
                if binding.WhichOneof("binding") == "name":
                    names.append(binding.name)
                else:  # an immediate value bound in place: held as a constant under a made-up name
                    name = f"{outputs[0]}/{param}/{index}"
                    constants[name] = reader.decode(binding.value, f"{param} of {outputs[0]!r}")
                    names.append(name)
            bound[param] = tuple(names)
        if op.blocks:
            raise MLProgramError(f"op #{position} {op.type!r} ({outputs[0]!r}) has nested blocks (control flow)")
        operations.append(Operation(position, op.type, bound, outputs, types))
    return ProgramSpec(
        inputs=inputs,
        outputs=tuple(block.outputs),
        operations=operations,
        constants=constants,
        value_types=value_types,
        opset=function.opset,
    )


def _value_type(proto: Any) -> ValueType:
    from coremltools.proto import MIL_pb2

    kind = proto.WhichOneof("type")
    if kind != "tensorType":
        raise MLProgramError(f"values of type {kind!r} are not supported (tensors only)")
    tensor = proto.tensorType
    dims = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in tensor.dimensions)
    return ValueType(dtype=MIL_pb2.DataType.Name(tensor.dataType), shape=dims)


class _ValueReader:
    """Decodes ``MIL_pb2.Value`` messages: immediate tensors and blob-file references."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.files: dict[str, WeightFile] = {}

    def decode(self, value: Any, what: str) -> np.ndarray:
        vtype = _value_type(value.type)
        if any(d is None for d in vtype.shape):
            raise MLProgramError(f"{what} has a non-constant shape {vtype.shape}")
        shape = tuple(int(d) for d in vtype.shape)
        dtype = NUMPY_TYPES.get(vtype.dtype)
        if dtype is None:
            raise MLProgramError(f"{what} has data type {vtype.dtype}, which is not supported")
        kind = value.WhichOneof("value")
        if kind == "blobFileValue":
            blob = value.blobFileValue
            return self._file(blob.fileName, what).read(int(blob.offset), dtype, shape)
        if kind != "immediateValue" or value.immediateValue.WhichOneof("value") != "tensor":
            raise MLProgramError(f"{what} is a {kind!r} value; only tensors are supported")
        tensor = value.immediateValue.tensor
        field_name = tensor.WhichOneof("value")
        if field_name is None:
            return np.zeros(shape, dtype=dtype)
        if field_name == "bytes":
            data = np.frombuffer(tensor.bytes.values, dtype=dtype.newbyteorder("<"))
        elif field_name == "strings":
            data = np.array(list(tensor.strings.values), dtype=object)
        else:
            data = np.asarray(list(getattr(tensor, field_name).values)).astype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if data.size != count:
            raise MLProgramError(f"{what} holds {data.size} values, its type {vtype.shape} needs {count}")
        return data.reshape(shape)

    def _file(self, file_name: str, what: str) -> WeightFile:
        if file_name not in self.files:
            if not file_name.startswith(MODEL_PATH_PREFIX):
                raise MLProgramError(f"{what} refers to blob file {file_name!r}, outside the package")
            path = (self.model_dir / file_name[len(MODEL_PATH_PREFIX) :]).resolve()
            if not path.is_relative_to(self.model_dir.resolve()):
                raise MLProgramError(f"{what} refers to blob file {file_name!r}, outside the package")
            if not path.is_file():
                raise MLProgramError(f"{what} refers to blob file {path}, which does not exist")
            self.files[file_name] = WeightFile(path)
        return self.files[file_name]
