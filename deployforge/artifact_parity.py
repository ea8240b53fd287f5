"""Artifact rows of the parity waterfall: each artifact run on its own runtime and compared with the original.

An ONNX file runs in onnxruntime on the stage parity batch. A Core ML package runs in :mod:`deployforge.mlprogram`
(coremltools predicts only on macOS), which reads the program and weight file the package holds and rounds to
float16 wherever an FP16 program holds float16: an FP16 package is judged on its own error. Nothing here imports
torch at module level, so ``verify`` can judge artifacts against the golden vectors (:mod:`deployforge.golden`)
where torch is not installed.

The Core ML inputs are image-like (:func:`parity_batch`), not the N(0, 1) batch of the torch and ONNX stages: FP16
is judged where a deployed model works. Of ``POOL_IMAGES`` images, the ``PARITY_IMAGES`` on which the original's
top-1 class leads the second by the widest margin are kept. A trained classifier leads by several logit units on
most photos; a random head over 1,000 classes leaves the top two within a hair on most inputs (the gap of the
largest of 1,000 draws), so any relative error flips some of them: measured on FastViT-SA12, rel-L2 1.8e-3 already
flipped one image in 32. Keeping the better half by margin gives the top-1 check the inputs it is meant for.
rel-L2 is judged on the same images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import DeployforgeError
from .golden import Batch
from .mlprogram import MLProgramError, load_program
from .parity import TOLERANCES, compare
from .report import CoreMLDetails, OnnxDetails, RuntimeDetails, StageRecord
from .targets import get_target
from .targets.protocol import run_in_batches

if TYPE_CHECKING:
    from torch import nn

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
) -> tuple[Batch, np.ndarray]:
    """The Core ML parity images and the original's logits on them.

    ``POOL_IMAGES`` image-like 16-bit images (:func:`deployforge.condition.calibration_pixels`, normalized as the
    model expects) go through the original; the ``PARITY_IMAGES`` whose top-1 logit leads the second by the most,
    in units of that image's logit spread, are kept in their drawn order.

    Args:
        original: the multi-branch original, in eval mode.
        input_size: image side.
        mean: per-channel normalization mean.
        std: per-channel normalization std.

    Returns:
        ``(images, logits)``: ``PARITY_IMAGES`` images of ``input_size`` and ``(PARITY_IMAGES, classes)``.
    """
    import torch

    from .condition import calibration_pixels
    from .pipeline import logits

    pool = Batch.of_pixels(calibration_pixels(POOL_IMAGES, input_size, seed=PARITY_IMAGES_SEED), mean, std)
    reference = logits(original, torch.from_numpy(pool.inputs)).reshape(POOL_IMAGES, -1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / np.maximum(reference.std(axis=1), 1e-30)
    kept = np.sort(np.argsort(-margin, kind="stable")[:PARITY_IMAGES])
    return pool.take(kept), reference[kept]


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


def coreml_record(path: Path, details: CoreMLDetails, inputs: np.ndarray, reference: np.ndarray) -> StageRecord:
    """The waterfall row of a Core ML package: its interpreted outputs against the original's ``reference``.

    Args:
        path: the ``.mlpackage``.
        details: what the export recorded of the package (its precision names the stage and the bounds).
        inputs: the parity images (:func:`parity_batch`), as the model takes them.
        reference: the original's logits on ``inputs``.

    Returns:
        The row, timed; a package the interpreter cannot read or run is a row with an ``error`` naming why.
    """
    started = time.perf_counter()
    stage = f"coreml-{details.precision.value}"
    details = replace(details, numerics=NUMERICS)
    try:
        outputs = package_logits(path, inputs)
    except MLProgramError as error:
        seconds = round(time.perf_counter() - started, 3)
        return StageRecord(stage, None, details, path.name, f"the interpreter cannot run it: {error}", seconds)
    parity = compare(outputs, reference, TOLERANCES.for_stage(stage), TOLERANCES.min_top1_for_stage(stage))
    return StageRecord(stage, parity, details, file=path.name, seconds=round(time.perf_counter() - started, 3))


def fit_batch(values: np.ndarray, batch: int | None) -> np.ndarray:
    """The parity batch as a graph of fixed ``batch`` takes it: cut to ``batch``, or repeated up to it."""
    if batch is None or batch == len(values):
        return values
    repeats = -(-batch // len(values))
    return np.concatenate([values] * repeats)[:batch]


def onnx_logits(source: Path | bytes, inputs: np.ndarray, workers: int | None = None) -> np.ndarray:
    """Run an ONNX model with onnxruntime on the CPU and return its first output.

    The session is the one :func:`deployforge.targets.onnx.run_onnx` opens (CPU provider, one intra-op thread,
    default graph optimizations), opened once; with ``n > 1`` workers (default: the available cores) and a
    dynamic batch, ``n`` threads run one chunk of the batch each on it (onnxruntime releases the GIL and its
    sessions are thread-safe). A graph of fixed batch runs whole.
    """
    import onnxruntime as ort

    from .benchmark import available_cores

    workers = workers or available_cores()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path_or_bytes = str(source) if isinstance(source, Path) else source
    session = ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    fixed = isinstance(graph_input.shape[0], int)
    chunks = [inputs] if fixed else np.array_split(inputs, min(workers, len(inputs)))
    if len(chunks) < 2:
        return session.run(None, {graph_input.name: inputs})[0]
    with ThreadPoolExecutor(len(chunks), thread_name_prefix="deployforge-parity") as pool:
        outputs = list(pool.map(lambda chunk: session.run(None, {graph_input.name: chunk})[0], chunks))
    return np.concatenate(outputs)


def onnx_record(
    stage: str,
    source: Path | bytes,
    inputs: np.ndarray,
    reference: np.ndarray,
    details: OnnxDetails | None = None,
    file: str | None = None,
) -> StageRecord:
    """Run an ONNX model with onnxruntime and compare it with the original's logits (the row is timed)."""
    started = time.perf_counter()
    parity = compare(onnx_logits(source, inputs), reference, TOLERANCES.onnx)
    seconds = round(time.perf_counter() - started, 3)
    return StageRecord(stage, parity, details or OnnxDetails(), file=file, seconds=seconds)


def runtime_record(path: Path, details: RuntimeDetails, inputs: np.ndarray, reference: np.ndarray) -> StageRecord:
    """The waterfall row of an artifact of a registered target: its own runtime runs ``inputs``, one thread.

    Args:
        path: the artifact's primary file.
        details: what the export recorded of it (its target, and the input shape fixing the batch).
        inputs: the stage parity batch.
        reference: the original's logits on ``inputs``.

    Returns:
        The row, timed; an artifact the runtime cannot load or run, or whose runtime is not installed, is a row
        with an ``error`` saying why (and, for a missing runtime, what to install).
    """
    started = time.perf_counter()
    target = get_target(details.target)
    try:
        target.require()
        runner = target.load(path, threads=1)
        outputs = run_in_batches(runner, inputs, details.input_shape[0])
    except DeployforgeError as error:
        return StageRecord(target.name, None, details, path.name, f"not run: {error}", _since(started))
    except Exception as error:  # noqa: BLE001 - whatever the runtime raises, the artifact did not run
        text = str(error).strip().splitlines()
        why = f"{type(error).__name__}{': ' + text[0][:160] if text else ''}"
        return StageRecord(
            target.name, None, details, path.name, f"{target.runtime} cannot run it ({why})", _since(started)
        )
    parity = compare(outputs, reference, TOLERANCES.for_stage(target.name))
    return StageRecord(target.name, parity, details, file=path.name, seconds=_since(started))


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
