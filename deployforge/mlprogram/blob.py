"""The MIL blob storage file (``weights/weight.bin``), parsed here.

Layout (coremltools ``mlmodel/src/MILBlob/Blob/StorageFormat.hpp``), all little-endian and 64-byte aligned:

- a 64-byte header: ``count`` (u32, number of blobs), ``version`` (u32, must be 2), seven reserved u64;
- per blob, a 64-byte metadata record: ``sentinel`` (u32, ``0xDEADBEEF``), ``dtype`` (u32), ``size`` (u64,
  bytes of data), ``offset`` (u64, where the data starts in the file), five reserved u64; then the data.

The program refers to a blob by the file offset of its metadata record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WeightFileError

ALIGNMENT = 64
SENTINEL = 0xDEADBEEF
STORAGE_VERSION = 2
HEADER = np.dtype([("count", "<u4"), ("version", "<u4"), ("reserved", "<u8", (7,))])
METADATA = np.dtype(
    [("sentinel", "<u4"), ("dtype", "<u4"), ("size", "<u8"), ("offset", "<u8"), ("reserved", "<u8", (5,))]
)
# BlobDataType codes with a whole-byte numpy type; the sub-byte and fp8 codes (8-13, 16, 17) are not read
BLOB_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f2"),
    2: np.dtype("<f4"),
    3: np.dtype("u1"),
    4: np.dtype("i1"),
    6: np.dtype("<i2"),
    7: np.dtype("<u2"),
    14: np.dtype("<i4"),
    15: np.dtype("<u4"),
}


@dataclass(frozen=True)
class Blob:
    """One blob's metadata record.

    Attributes:
        metadata_offset: file offset of the metadata record (what the program refers to).
        dtype: the blob's element type.
        size: data size in bytes.
        data_offset: file offset of the data.
    """

    metadata_offset: int
    dtype: np.dtype
    size: int
    data_offset: int


class WeightFile:
    """A parsed weight file: every blob's metadata validated on open, data read on demand.

    Args:
        path: the ``weight.bin`` file.

    Raises:
        WeightFileError: a short or truncated file, a wrong version, a bad sentinel, an unknown data type, or
            a blob whose data lies outside the file or overlaps its neighbour.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._data = np.fromfile(self.path, dtype=np.uint8)
        if self._data.size < HEADER.itemsize:
            raise WeightFileError(f"weight file {self.path} is truncated: {self._data.size} bytes, no header")
        header = self._data[: HEADER.itemsize].view(HEADER)[0]
        if int(header["version"]) != STORAGE_VERSION:
            raise WeightFileError(
                f"weight file {self.path} has storage version {int(header['version'])}, expected {STORAGE_VERSION}"
            )
        self.blobs: dict[int, Blob] = {}
        offset = HEADER.itemsize
        for index in range(int(header["count"])):
            blob = self._metadata(offset, f"blob {index} of {int(header['count'])}")
            self.blobs[offset] = blob
            offset = _align(blob.data_offset + blob.size)

    def _metadata(self, offset: int, which: str) -> Blob:
        end = offset + METADATA.itemsize
        if end > self._data.size:
            raise WeightFileError(
                f"weight file {self.path} is truncated: {which} needs its metadata at bytes {offset}..{end}, "
                f"the file has {self._data.size}"
            )
        record = self._data[offset:end].view(METADATA)[0]
        if int(record["sentinel"]) != SENTINEL:
            raise WeightFileError(
                f"weight file {self.path}: {which} at offset {offset} has sentinel {int(record['sentinel']):#x}, "
                f"expected {SENTINEL:#x}"
            )
        code = int(record["dtype"])
        if code not in BLOB_DTYPES:
            raise WeightFileError(f"weight file {self.path}: {which} at offset {offset} has unknown data type {code}")
        size, data_offset = int(record["size"]), int(record["offset"])
        if data_offset < end or data_offset + size > self._data.size:
            raise WeightFileError(
                f"weight file {self.path}: {which} at offset {offset} claims data at bytes "
                f"{data_offset}..{data_offset + size}, outside the file ({self._data.size} bytes) or over its metadata"
            )
        return Blob(metadata_offset=offset, dtype=BLOB_DTYPES[code], size=size, data_offset=data_offset)

    def read(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The blob whose metadata sits at ``offset``, checked against the type the program declares.

        Args:
            offset: file offset of the blob's metadata record.
            dtype: element type the program declares for the value.
            shape: shape the program declares for the value.

        Returns:
            A read-only array view of the data.

        Raises:
            WeightFileError: no blob starts at ``offset``, or its type or size disagrees with the declaration.
        """
        blob = self.blobs.get(offset)
        if blob is None:
            raise WeightFileError(
                f"weight file {self.path}: the program refers to a blob at offset {offset}, where none starts "
                f"(blobs start at {sorted(self.blobs)[:4]}...)"
            )
        if blob.dtype != np.dtype(dtype):
            raise WeightFileError(
                f"weight file {self.path}: blob at offset {offset} holds {blob.dtype}, the program expects "
                f"{np.dtype(dtype)}"
            )
        expected = int(np.prod(shape, dtype=np.int64)) * blob.dtype.itemsize
        if blob.size != expected:
            raise WeightFileError(
                f"weight file {self.path}: blob at offset {offset} has {blob.size} bytes, the program expects "
                f"{expected} for shape {tuple(shape)}"
            )
        raw = self._data[blob.data_offset : blob.data_offset + blob.size]
        return raw.view(blob.dtype).reshape(shape)


def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT
