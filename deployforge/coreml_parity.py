"""Core ML rows of the parity waterfall: run an ``.mlpackage`` with the numpy interpreter, compare with the original.

coremltools predicts only on macOS, so the package is run by :mod:`deployforge.mlprogram`, which reads the
program and weight file the package holds and rounds to float16 wherever an FP16 program holds float16: an FP16
package is judged on its own error.

The inputs are image-like (:func:`parity_batch`), not the N(0, 1) batch of the torch and ONNX stages: FP16 is
judged where a deployed model works. Of ``POOL_IMAGES`` images, the ``PARITY_IMAGES`` on which the original's
top-1 class leads the second by the widest margin are kept. A trained classifier leads by several logit units on
most photos; a random head over 1,000 classes leaves the top two within a hair on most inputs (the gap of the
largest of 1,000 draws), so any relative error flips some of them: measured on FastViT-SA12, rel-L2 1.8e-3 already
flipped one image in 32. Keeping the better half by margin gives the top-1 check the inputs it is meant for.
rel-L2 is judged on the same images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .condition import calibration_images
from .mlprogram import MLProgramError, load_program
from .parity import TOLERANCES, compare
from .report import CoreMLDetails, StageRecord

PARITY_IMAGES = 32  # the top-1 agreement of an FP16 package is judged over 32 inputs
POOL_IMAGES = 64  # drawn to choose them from
PARITY_IMAGES_SEED = 3  # apart from the weights' (0), the parity batch's (1) and the calibration batch's (2)
NUMERICS = (
    f"run by deployforge.mlprogram (numpy reference interpreter, float16 rounding where the program holds "
    f"float16) on the {PARITY_IMAGES} of {POOL_IMAGES} image-like inputs (seed {PARITY_IMAGES_SEED}) with the "
    "widest top-1 margin in the original"
)


def parity_batch(
    original: nn.Module, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, np.ndarray]:
    """The Core ML parity inputs and the original's logits on them.

    ``POOL_IMAGES`` image-like inputs (:func:`deployforge.condition.calibration_images`, normalized as the model
    expects) go through the original; the ``PARITY_IMAGES`` whose top-1 logit leads the second by the most, in
    units of that image's logit spread, are kept in their drawn order.

    Args:
        original: the multi-branch original, in eval mode.
        input_size: image side.
        mean: per-channel normalization mean.
        std: per-channel normalization std.

    Returns:
        ``(images, logits)``: ``(PARITY_IMAGES, 3, input_size, input_size)`` and ``(PARITY_IMAGES, classes)``.
    """
    from .pipeline import logits

    pool = calibration_images(POOL_IMAGES, input_size, mean, std, seed=PARITY_IMAGES_SEED)
    reference = logits(original, pool).reshape(POOL_IMAGES, -1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / np.maximum(reference.std(axis=1), 1e-30)
    kept = np.sort(np.argsort(-margin, kind="stable")[:PARITY_IMAGES])
    return pool[kept], reference[kept]


def package_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Run the ``.mlpackage`` at ``path`` on ``inputs`` (``(N, 3, H, W)``) with the interpreter.

    A batch-1 package runs all N images in one pass; a package of fixed batch B runs them B at a time (the
    last group padded with repeats of the first image, whose outputs are dropped).

    Raises:
        MLProgramError: the package cannot be read or run (a tampered weight file, an unknown op).
    """
    program = load_program(path)
    (name,) = program.input_names
    (output,) = program.output_names
    batch = program.input_shapes[name][0]
    if batch == 1:
        return program.run({name: inputs}, chunk=8)[output].reshape(len(inputs), -1)
    count = len(inputs)
    padded = np.concatenate([inputs, np.repeat(inputs[:1], -count % batch, axis=0)])
    groups = [program.run({name: padded[i : i + batch]})[output] for i in range(0, len(padded), batch)]
    return np.concatenate(groups).reshape(len(padded), -1)[:count]


def coreml_record(path: Path, details: CoreMLDetails, inputs: torch.Tensor, reference: np.ndarray) -> StageRecord:
    """The waterfall row of a Core ML package: its interpreted outputs against the original's ``reference``.

    Args:
        path: the ``.mlpackage``.
        details: what the export recorded of the package (its precision names the stage and the bounds).
        inputs: the parity images (:func:`parity_batch`).
        reference: the original's logits on ``inputs``.

    Returns:
        The row, timed; a package the interpreter cannot read or run is a row with an ``error`` naming why.
    """
    started = time.perf_counter()
    stage = f"coreml-{details.precision.value}"
    details = replace(details, numerics=NUMERICS)
    try:
        outputs = package_logits(path, inputs.numpy())
    except MLProgramError as error:
        seconds = round(time.perf_counter() - started, 3)
        return StageRecord(stage, None, details, path.name, f"the interpreter cannot run it: {error}", seconds)
    parity = compare(outputs, reference, TOLERANCES.for_stage(stage), TOLERANCES.min_top1_for_stage(stage))
    return StageRecord(stage, parity, details, file=path.name, seconds=round(time.perf_counter() - started, 3))
