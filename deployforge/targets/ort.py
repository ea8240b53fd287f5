"""ONNX Runtime Mobile: the ``.ort`` format its mobile packages load, and the operator config of a reduced build.

The reparameterized model is exported to ONNX at a fixed batch of 1 and converted by onnxruntime's own tool
(``onnxruntime.tools.convert_onnx_models_to_ort``) with its "Fixed" optimization style, the one meant for the CPU
execution provider: optimizations are applied once and saved in the file. The tool leaves out the x86-only NCHWc
layout transform unless told the target is amd64, so the file runs on ARM phones too. Beside the model it writes
``MODEL.required_operators.config``, the list of operators a reduced-size ONNX Runtime build
(``--include_ops_by_config``) must keep. onnxruntime is a core dependency: this target needs no extra.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .protocol import ArtifactDescription, Runner, TargetOptions, size_on_disk

if TYPE_CHECKING:
    import torch
    from torch import nn

CONFIG_SUFFIX = ".required_operators.config"


def _operators_in_config(path: Path) -> dict[str, int]:
    """``domain;opset;Op1,Op2`` lines of an operator config → ``{"Op1": 1, ...}`` (the config lists each op once)."""
    ops: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ops.update(line.split(";")[-1].split(","))
    return dict(ops)


class OrtMobileTarget:
    """``.ort`` + operator config, converted and run by onnxruntime."""

    name = "ort"
    runtime = "onnxruntime"
    package = "onnxruntime"
    extra = None
    rewrites: tuple[str, ...] = ()

    def files(self, model: str) -> tuple[str, ...]:
        """``MODEL.ort`` and ``MODEL.required_operators.config``."""
        return f"{model}.ort", f"{model}{CONFIG_SUFFIX}"

    def require(self) -> None:
        """Onnxruntime is a core dependency: nothing to check."""

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Export ``model`` to ONNX at ``example``'s batch, convert it to ``.ort``, write its operator config."""
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

        from deployforge.trace import trace

        from .onnx import export_onnx, save_onnx

        graph = export_onnx(trace(model, example), example, options.opset, batch=len(example))
        with tempfile.TemporaryDirectory(prefix="deployforge-ort-") as scratch:
            source = Path(scratch) / f"{name}.onnx"
            save_onnx(graph, source)
            converted = Path(scratch) / "converted"
            logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # it logs the config's path
            with contextlib.redirect_stdout(io.StringIO()):  # and prints its progress
                convert_onnx_models_to_ort(source, converted, [OptimizationStyle.Fixed])
            model_file, config_file = self.files(name)
            shutil.move(converted / model_file, directory / model_file)
            config = (converted / f"{name}{CONFIG_SUFFIX}").read_text()
            # the tool names the scratch path it converted from: name the shipped file instead
            (directory / config_file).write_text(config.replace(str(converted / model_file), model_file))
        operators = _operators_in_config(directory / config_file)
        return {
            "converter": "onnxruntime.tools.convert_onnx_models_to_ort, optimization style Fixed, no NCHWc",
            "opset": str(options.opset),
            "operators for a reduced build": str(len(operators)),
        }

    def load(self, path: Path, threads: int = 1) -> Runner:
        """An onnxruntime CPU session on the ``.ort`` file, ``threads`` intra-op threads."""
        from .onnx import session_runner

        return session_runner(path, threads, ort_format=True)

    def describe(self, path: Path) -> ArtifactDescription:
        """Inputs and outputs from a session on the file, operators from its config, size of both files."""
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.add_session_config_entry("session.load_model_format", "ORT")
        session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        config = path.with_name(path.name.removesuffix(".ort") + CONFIG_SUFFIX)
        return ArtifactDescription(
            inputs={i.name: tuple(i.shape) for i in session.get_inputs()},
            outputs={o.name: tuple(o.shape) for o in session.get_outputs()},
            ops=_operators_in_config(config) if config.exists() else {},
            size_bytes=size_on_disk(path, *([config] if config.exists() else [])),
            facts={"format": "ORT flatbuffer"},
        )


TARGET = OrtMobileTarget()
