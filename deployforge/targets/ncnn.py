"""ncnn: a ``.param`` (the layer graph, text) and a ``.bin`` (the weights), converted by pnnx, run by ncnn at FP32.

The reparameterized model is traced with ``torch.jit.trace`` at batch 1 (pnnx reads TorchScript) and converted
by the ``pnnx`` executable shipped in the pnnx wheel, called directly: its Python wrapper ignores the converter's
exit status and then imports the generated ``_pnnx.py``. pnnx stores ncnn weights as FP16 unless given
``fp16=0``; here they stay FP32, and ncnn runs them with every FP16/BF16 storage and arithmetic option off.

An ncnn blob has no batch dimension (a 3-D blob is ``C×H×W``): the artifact takes one image, and its runner
runs one extractor per image of a batch. The param format holds no shapes unless the ``Input`` layer is given
them; the export writes the traced shape there (``0=W 1=H 2=C``, ncnn's own shape hint), which is where
``describe`` reads it back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deployforge.errors import DeployforgeError

from .protocol import ArtifactDescription, MissingExtra, Runner, TargetOptions, size_on_disk

if TYPE_CHECKING:
    import torch
    from torch import nn

PARAM_MAGIC = 7767517  # first line of every ncnn .param text file
PARAM_SUFFIX, BIN_SUFFIX = ".ncnn.param", ".ncnn.bin"
# Below this many .bin bytes per model parameter the weights cannot all be FP32 (FP16 storage is ~2 bytes).
MIN_FP32_BYTES_PER_PARAM = 3.5
INPUT_SHAPE_KEYS = ("0", "1", "2")  # the Input layer's w, h, c


def _quiet_openmp() -> None:
    """Make ncnn's OpenMP threads sleep when idle; call before ncnn is first imported.

    ncnn's wheel bundles its own libgomp, which reads ``OMP_WAIT_POLICY`` once, when it is loaded. Left unset,
    idle worker threads spin for a while after every parallel region, taking the cores from any other runtime
    benchmarked in the same process. ``setdefault``: a policy the user chose is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class _Layer:
    """One layer line of a ``.param`` file: ``type name #inputs #outputs inputs... outputs... key=value...``."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[str, str]


def _read_param(path: Path) -> tuple[list[_Layer], int]:
    """The layers of a ``.param`` file, in file (topological) order, and its blob count.

    Raises:
        DeployforgeError: the file is not an ncnn param file.
    """
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2 or lines[0] != [str(PARAM_MAGIC)] or len(lines[1]) != 2:
        raise DeployforgeError(f"{path} is not an ncnn param file (no magic {PARAM_MAGIC} and layer/blob counts)")
    layers = []
    for fields in lines[2:]:
        kind, name, bottoms, tops = fields[0], fields[1], int(fields[2]), int(fields[3])
        blobs = fields[4 : 4 + bottoms + tops]
        params = dict(item.split("=", 1) for item in fields[4 + bottoms + tops :])
        layers.append(_Layer(kind, name, tuple(blobs[:bottoms]), tuple(blobs[bottoms:]), params))
    if len(layers) != int(lines[1][0]):
        raise DeployforgeError(f"{path} declares {lines[1][0]} layers but lists {len(layers)}")
    return layers, int(lines[1][1])


def _refuse_unconverted(layers: list[_Layer]) -> None:
    """Raise if pnnx left layers ncnn has no implementation of.

    pnnx writes an op it cannot lower under its own name (``Tensor.reshape``, ``torch.unbind``) and exits 0;
    ncnn then refuses the whole param file on load.

    Raises:
        RuntimeError: naming each such op, its count and its first layer.
    """
    import ncnn

    unknown: dict[str, list[str]] = {}
    for layer in layers:
        if ncnn.layer_to_index(layer.type) < 0:
            unknown.setdefault(layer.type, []).append(layer.name)
    if unknown:
        listed = ", ".join(f"{kind} x{len(names)} (first: {names[0]})" for kind, names in unknown.items())
        raise RuntimeError(f"pnnx could not lower these ops to ncnn layers: {listed}")


def _with_input_shape(text: str, shape: tuple[int, ...]) -> str:
    """``text`` (a one-input param file) with ``shape`` ``(1, C, H, W)`` written on its ``Input`` layer."""
    _, channels, height, width = shape
    hint = " ".join(f"{key}={value}" for key, value in zip(INPUT_SHAPE_KEYS, (width, height, channels), strict=True))
    lines = text.splitlines()
    (index,) = [i for i, line in enumerate(lines) if line.split()[:1] == ["Input"]]
    lines[index] = f"{lines[index].rstrip()} {hint}"
    return "\n".join(lines) + "\n"


def _blob_shape(mat) -> tuple[int, ...]:
    """An ncnn Mat's shape as a batch-1 array shape: ``dims`` 1 → ``(1, w)``, 3 → ``(1, c, h, w)``."""
    return (1, *{1: (mat.w,), 2: (mat.h, mat.w), 3: (mat.c, mat.h, mat.w), 4: (mat.c, mat.d, mat.h, mat.w)}[mat.dims])


class NcnnTarget:
    """ncnn ``.param`` + ``.bin``, converted by pnnx at FP32, run by ncnn's Python binding on the CPU."""

    name = "ncnn"
    runtime = "ncnn"
    package = "ncnn"
    extra = "ncnn"
    rewrites: tuple[str, ...] = ()

    def files(self, model: str) -> tuple[str, ...]:
        """``MODEL.ncnn.param`` and ``MODEL.ncnn.bin``."""
        return f"{model}{PARAM_SUFFIX}", f"{model}{BIN_SUFFIX}"

    def require(self) -> None:
        """Check that ncnn and pnnx import (setting ``OMP_WAIT_POLICY`` first, see :func:`_quiet_openmp`).

        Raises:
            MissingExtra: one of them does not.
        """
        _quiet_openmp()
        for package in ("ncnn", "pnnx"):
            try:
                __import__(package)
            except ImportError as error:
                raise MissingExtra(self.name, package, self.extra) from error

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Trace ``model`` on one image of ``example``, convert it with pnnx (``fp16=0``), keep the ncnn files.

        Args:
            model: the reparameterized eval-mode model.
            example: an input of the image shape the artifact takes (ncnn has no batch: only the first image).
            directory: where ``files(name)`` are written.
            name: the model's name, for the file names.
            options: unused (pnnx offers no choice this target exposes).

        Returns:
            The converter and its version, the layer count, and the weights' storage precision.

        Raises:
            RuntimeError: pnnx failed, wrote no ncnn files (its last output lines say why), left ops ncnn has no
                layer for, or wrote weights that are not FP32.
        """
        import pnnx
        import torch

        del options
        example = example[:1].contiguous()
        shape = tuple(int(d) for d in example.shape)
        param_file, bin_file = self.files(name)
        with tempfile.TemporaryDirectory(prefix="deployforge-ncnn-") as scratch:
            work = Path(scratch)
            traced_path = work / "model.pt"
            with torch.no_grad(), warnings.catch_warnings():
                # pnnx reads TorchScript only (torch deprecates jit tracing); shapes baked in as constants are
                # what a fixed-shape artifact wants.
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                traced = torch.jit.trace(model.eval(), example, check_trace=False)
            traced.save(str(traced_path))
            command = [
                pnnx.EXEC_PATH,
                str(traced_path),
                f"inputshape=[{','.join(map(str, shape))}]f32",
                "device=cpu",
                "fp16=0",
                f"ncnnparam={work / param_file}",
                f"ncnnbin={work / bin_file}",
            ]
            # pnnx writes its other outputs (.pnnx.param, _pnnx.py, .pnnx.onnx, ...) beside the traced model.
            result = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)  # noqa: S603
            if result.returncode != 0 or not (work / param_file).exists() or not (work / bin_file).exists():
                tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
                raise RuntimeError(f"pnnx failed (exit status {result.returncode}): {tail}")
            layers, _ = _read_param(work / param_file)
            _refuse_unconverted(layers)
            parameters = sum(p.numel() for p in model.parameters())
            per_parameter = (work / bin_file).stat().st_size / max(parameters, 1)
            if per_parameter < MIN_FP32_BYTES_PER_PARAM:
                raise RuntimeError(f"pnnx wrote {per_parameter:.2f} bytes per parameter: the weights are not all FP32")
            text = (work / param_file).read_text()
            (directory / param_file).write_text(_with_input_shape(text, shape))
            shutil.move(work / bin_file, directory / bin_file)
        return {
            "converter": f"pnnx {metadata.version('pnnx')} (torch.jit.trace, fp16=0)",
            "layers": str(len(layers)),
            "weights": f"fp32 ({per_parameter:.2f} bytes per model parameter)",
        }

    def load(self, path: Path, threads: int = 1) -> Runner:
        """An ncnn CPU net on ``path`` (the ``.param``; its ``.bin`` beside it), FP32 throughout.

        Args:
            path: the ``.param`` file.
            threads: ncnn's thread count.

        Returns:
            ``(B, 3, H, W)`` → ``(B, classes)``: one extractor per image.

        Raises:
            DeployforgeError: ncnn rejects the param file or the weights (a missing or truncated ``.bin``).
        """
        net = self._open(path, threads)
        (input_name,) = net.input_names()
        (output_name,) = net.output_names()

        def run(inputs: np.ndarray) -> np.ndarray:
            return np.stack([_extract(net, input_name, image, output_name).reshape(-1) for image in inputs])

        return run

    def describe(self, path: Path) -> ArtifactDescription:
        """Layer histogram and blob names from the ``.param`` text; shapes from its ``Input`` layer and a run.

        The input shape is the one the export wrote on the ``Input`` layer; the output's is that of the blob
        ncnn computes from a zero image of that shape. A param file without the hint has no shapes to report.
        """
        layers, blob_count = _read_param(path)
        consumed = {blob for layer in layers for blob in layer.inputs}
        inputs: dict[str, tuple[int, ...]] = {}
        for layer in (layer for layer in layers if layer.type == "Input"):
            hint = [layer.params.get(key) for key in INPUT_SHAPE_KEYS]
            shape = () if None in hint else (1, int(hint[2]), int(hint[1]), int(hint[0]))
            inputs.update(dict.fromkeys(layer.outputs, shape))
        outputs = {blob: () for layer in layers for blob in layer.outputs if blob not in consumed}
        if len(inputs) == 1 and all(inputs.values()):
            net = self._open(path, threads=1)
            ((input_name, shape),) = inputs.items()
            zeros = np.zeros(shape[1:], dtype=np.float32)
            outputs = {blob: _extract(net, input_name, zeros, blob, as_mat=True) for blob in outputs}
        weights = _weights_of(path)
        return ArtifactDescription(
            inputs=inputs,
            outputs=outputs,
            ops=dict(Counter(layer.type for layer in layers)),
            size_bytes=size_on_disk(path, *([weights] if weights.exists() else [])),
            facts={"format": "ncnn param + bin", "layers": str(len(layers)), "blobs": str(blob_count)},
        )

    def _open(self, path: Path, threads: int):
        """An ``ncnn.Net`` on the CPU with FP16/BF16 storage and arithmetic off, the param and weights loaded."""
        self.require()
        import ncnn

        net = ncnn.Net()
        options = net.opt  # a reference into the net: layers pick their kernels from it when the model loads
        options.use_vulkan_compute = False
        options.use_fp16_storage = False
        options.use_fp16_packed = False
        options.use_fp16_arithmetic = False
        options.use_bf16_storage = False
        options.use_bf16_packed = False
        options.num_threads = threads
        if net.load_param(str(path)) != 0:
            raise DeployforgeError(f"ncnn cannot load the param file {path}")
        weights = _weights_of(path)
        if net.load_model(str(weights)) != 0:
            raise DeployforgeError(f"ncnn cannot load the weights {weights} (missing, truncated or not this model's)")
        return net


def _weights_of(path: Path) -> Path:
    """The ``.bin`` beside a ``.param``."""
    return path.with_name(path.name.removesuffix(PARAM_SUFFIX) + BIN_SUFFIX)


def _extract(net, input_name: str, image: np.ndarray, output_name: str, as_mat: bool = False):
    """Run one ``(C, H, W)`` image through ``net``; the output as an array, or (``as_mat``) its batch-1 shape.

    Raises:
        RuntimeError: ncnn reports a failure computing the output.
    """
    import ncnn

    data = np.ascontiguousarray(image, dtype=np.float32)
    extractor = net.create_extractor()
    extractor.input(input_name, ncnn.Mat(data))  # the Mat wraps data's memory, without a copy: keep data alive
    status, output = extractor.extract(output_name)
    if status != 0:
        raise RuntimeError(f"ncnn failed to compute {output_name} (status {status})")
    if as_mat:
        return _blob_shape(output)
    return np.array(output, dtype=np.float32)


TARGET = NcnnTarget()
