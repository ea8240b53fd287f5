"""Golden vectors: the parity inputs and the original's outputs, written beside the artifacts as ``reference.npz``.

``verify`` runs every artifact on these inputs and compares it with these outputs using numpy, onnxruntime and the
Core ML interpreter alone: no torch, no registry, no weights file. The machine a model is deployed to can check its
artifacts this way. Where the original can be rebuilt, ``verify`` also checks that it still computes these outputs.

Image-like inputs are stored as the pixels they were normalized from: photos given with ``--images`` as their 8-bit
pixels (a quarter of their float32 size), the drawn Core ML parity images as 16-bit ones (half; at 8 bits their
quantization noise alone moved MobileOne-S0's FP16 error from 5.8e-3 to 1.1e-2, so they keep 16). :func:`normalize`
turns them into the model's inputs, the same float32 operations in the same order at export and at verification,
so the inputs are equal bit for bit.
Normal-noise inputs are stored as they are.

The file is one of the export's artifacts: the manifest holds its sha256, so a changed vector fails ``verify``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeployforgeError

GOLDEN = "reference.npz"


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Integer images ``(N, 3, H, W)`` scaled to [0, 1] (by their type's largest value) and normalized, as float32.

    Args:
        pixels: ``uint8`` or ``uint16`` images, channels first.
        mean: per-channel mean (of the [0, 1] scale).
        std: per-channel std.
    """
    scaled = pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std32 = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (scaled - mean32) / std32


@dataclass(frozen=True)
class Batch:
    """Parity inputs as the model takes them, and the pixels they were normalized from when they are images.

    Attributes:
        inputs: float32 ``(N, 3, H, W)``.
        pixels: uint8 or uint16 ``(N, 3, H, W)`` with ``normalize(pixels) == inputs``, or ``None`` (normal noise).
    """

    inputs: np.ndarray
    pixels: np.ndarray | None = None

    @classmethod
    def of_pixels(cls, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Batch:
        """The batch of integer images ``pixels``, normalized with ``mean`` and ``std``."""
        return cls(normalize(pixels, mean, std), pixels)

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, kept: np.ndarray) -> Batch:
        """The images at the indices ``kept``, in that order."""
        return Batch(self.inputs[kept], None if self.pixels is None else self.pixels[kept])


@dataclass(frozen=True)
class Golden:
    """What the original computed at export: the stage parity batch and, with a Core ML artifact, its image batch.

    Attributes:
        batch: the inputs every stage and every ONNX artifact is compared on.
        outputs: the original's outputs on them, float32 ``(N, classes)``.
        images: the Core ML parity images, or ``None`` when no Core ML package was written.
        image_outputs: the original's outputs on ``images``.
    """

    batch: Batch
    outputs: np.ndarray
    images: Batch | None = None
    image_outputs: np.ndarray | None = None

    def write(self, path: Path) -> None:
        """Write the vectors to ``path`` (a compressed ``.npz``; the caller stages the directory)."""
        arrays = {"outputs": self.outputs}
        arrays.update(_stored("inputs", self.batch))
        if self.images is not None:
            arrays.update(_stored("images", self.images))
            arrays["image_outputs"] = self.image_outputs
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def _stored(name: str, batch: Batch) -> dict[str, np.ndarray]:
    return {f"{name}_pixels": batch.pixels} if batch.pixels is not None else {name: batch.inputs}


def _batch(arrays: dict[str, np.ndarray], name: str, mean: Sequence[float], std: Sequence[float]) -> Batch | None:
    if f"{name}_pixels" in arrays:
        return Batch.of_pixels(arrays[f"{name}_pixels"], mean, std)
    return Batch(arrays[name]) if name in arrays else None


def read_golden(directory: Path, mean: Sequence[float], std: Sequence[float]) -> Golden:
    """Read ``directory/reference.npz``; image pixels are normalized with the manifest's ``mean`` and ``std``.

    Raises:
        DeployforgeError: the file is missing, unreadable, or lacks the stage batch or its outputs.
    """
    path = Path(directory) / GOLDEN
    rerun = "re-run `deployforge export` to write it"
    if not path.is_file():
        raise DeployforgeError(f"no {GOLDEN} in {directory}; {rerun}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DeployforgeError(f"{path} is not a readable .npz archive ({type(error).__name__}); {rerun}") from None
    batch = _batch(arrays, "inputs", mean, std)
    if batch is None or "outputs" not in arrays:
        raise DeployforgeError(f"{path} holds no parity inputs or outputs; {rerun}")
    images = _batch(arrays, "images", mean, std)
    return Golden(batch, arrays["outputs"], images, arrays.get("image_outputs") if images is not None else None)
