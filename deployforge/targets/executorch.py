"""ExecuTorch export: a ``.pte`` program lowered to the XNNPACK backend (FP32), run by ExecuTorch's runtime.

The reparameterized model is captured with ``torch.export`` at the example's fixed shape, lowered with
``to_edge_transform_and_lower`` and the XNNPACK partitioner, and serialized. Ops XNNPACK does not take stay in
the program as ExecuTorch's portable CPU kernels; such a partly delegated program is refused unless
``allow_partial`` accepts it.

Before lowering, a global average pool written as ``mean`` over H and W without ``keepdim`` (every classifier
head here) is rewritten as the ``keepdim`` mean XNNPACK delegates and a reshape: the same arithmetic, so it is
not a named rewrite. GroupNorm is decomposed into two passes (the mean, then the mean of the centred squares),
each a hierarchy of global average pools XNNPACK delegates. ExecuTorch's portable ``native_group_norm`` kernel,
which would otherwise run it, loses up to 1e-2 relative on an activation with a large mean (a one-pass variance
in float32; docs/runtimes.md): enough to fail MobileViT v2-100's parity at 256 px.

``split-dw7x7`` (:mod:`deployforge.targets.rewrites`, asked for in ``rewrites``) keeps XNNPACK's 7×7 depthwise
convolutions off its generic IGEMM path, two thirds of FastViT-T8's time (``profile`` shows it);
split, FastViT-T8 runs twice as fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
import warnings
import weakref
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deployforge.errors import InvalidSetting

from .protocol import ArtifactDescription, ExportRefused, MissingExtra, Runner, TargetOptions, size_on_disk
from .rewrites import SPLIT_DW7X7, apply_rewrites

if TYPE_CHECKING:  # torch and executorch load where a program is exported, run or read
    import torch
    from torch import nn

METHOD = "forward"
XNNPACK = "XnnpackBackend"

# Events of the runtime itself, not of an op.
_FRAME_EVENTS = {"Method::execute", "DELEGATE_CALL", "OPERATOR_CALL"}
_CONV_NODES = ("XNNConv2d", "XNNDepthwiseConv2d", "XNNFullyConnected")
_CONV_EVENTS = ("Convolution", "Fully Connected")


@contextlib.contextmanager
def _quiet():
    """Hide ExecuTorch's import-time ``ExperimentalWarning``s."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _keepdim_means(program: Any) -> int:
    """Rewrite ``mean(x, (H, W))`` of a 4-D ``x`` in ``program`` as ``mean(x, (-1, -2), keepdim=True).view(N, C)``.

    XNNPACK delegates a mean only as its global average pool (4-D, innermost two dims, ``keepdim``).

    Returns:
        How many means were rewritten.
    """
    import torch

    graph = program.graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.mean.dim:
            continue
        source, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        value = getattr(source, "meta", {}).get("val")
        if keepdim or node.kwargs.get("dtype") is not None or value is None or value.dim() != 4:
            continue
        if dims is None or sorted(d % 4 for d in dims) != [2, 3]:
            continue
        shape = list(node.meta["val"].shape)
        with graph.inserting_before(node):
            pooled = graph.call_function(torch.ops.aten.mean.dim, (source, [-1, -2], True))
            pooled.meta = {**node.meta, "val": node.meta["val"].reshape(*shape, 1, 1)}
            flat = graph.call_function(torch.ops.aten.view.default, (pooled, shape))
            flat.meta = dict(node.meta)
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
        count += 1
    if count:
        program.graph_module.recompile()
    return count


def _two_pass_group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    cudnn_enabled: bool = True,
) -> torch.Tensor:
    """``aten.group_norm`` as XNNPACK-delegable ops: centred two-pass statistics, reduced hierarchically.

    Each group is viewed as ``(channels, H, W)``; a mean over a group is the global average pool over ``H, W``
    followed by one over the channels (equal-sized parts, so the mean of means is the mean, and the float32
    sums stay short). The variance is the mean of the centred squares, never ``E[x²] - E[x]²``.
    """
    import torch

    del cudnn_enabled  # a CUDA flag of the aten signature
    batch, channels, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    height, width = spatial if len(spatial) == 2 else (math.prod(spatial), 1)
    per_group = channels // num_groups
    rows = batch * num_groups

    def group_mean(t: torch.Tensor) -> torch.Tensor:
        per_channel = t.mean(dim=(-1, -2), keepdim=True).reshape(rows, 1, per_group, 1)
        return per_channel.mean(dim=(-1, -2), keepdim=True)

    grouped = x.reshape(rows, per_group, height, width)
    centred = grouped - group_mean(grouped)
    normalized = (centred * torch.rsqrt(group_mean(centred * centred) + eps)).reshape(x.shape)
    affine_shape = (channels,) + (1,) * len(spatial)
    if weight is not None:
        normalized = normalized * weight.reshape(affine_shape)
    if bias is not None:
        normalized = normalized + bias.reshape(affine_shape)
    return normalized


def _decompose_group_norms(program: Any) -> tuple[Any, int]:
    """``program`` with every ``aten.group_norm`` replaced by :func:`_two_pass_group_norm`, and how many there were."""
    import torch

    group_norm = torch.ops.aten.group_norm.default
    count = sum(1 for node in program.graph.nodes if node.op == "call_function" and node.target is group_norm)
    if count:
        program = program.run_decompositions({group_norm: _two_pass_group_norm})
    return program, count


def _op_name(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def _delegation(graph_module: Any) -> tuple[Counter[str], Counter[str]]:
    """``(delegated, outside)`` op histograms of a lowered graph (getitem, placeholders and outputs not counted)."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    def compute_ops(graph: Any) -> list[str]:
        return [
            _op_name(node.target)
            for node in graph.nodes
            if node.op == "call_function" and _op_name(node.target) != "getitem"
        ]

    delegated: Counter[str] = Counter()
    for child in graph_module.children():
        if isinstance(child, LoweredBackendModule):
            delegated.update(compute_ops(child.original_module.graph))
    outside = Counter(op for op in compute_ops(graph_module.graph) if op != "executorch_call_delegate")
    return delegated, outside


def _histogram_text(ops: Counter[str]) -> str:
    return ", ".join(f"{count}× {op}" for op, count in ops.most_common()) or "none"


def _read_program(data: bytes) -> tuple[Any, int]:
    """The flatbuffer ``Program`` of a ``.pte`` file's bytes, and where its segments start."""
    from executorch.exir._serialize._program import _flatbuffer_to_program, _get_extended_header

    header = _get_extended_header(data)
    if header is not None and header.is_valid():
        return _flatbuffer_to_program(data[: header.program_size]), header.segment_base_offset
    return _flatbuffer_to_program(data), 0


def _delegate_payload(program: Any, data: bytes, segment_base: int, delegate: Any) -> bytes:
    from executorch.exir.schema import DataLocation

    reference = delegate.processed
    if reference.location == DataLocation.INLINE:
        return bytes(program.backend_delegate_data[reference.index].data)
    segment = program.segments[reference.index]
    start = segment_base + segment.offset
    return data[start : start + segment.size]


def _xnnpack_nodes(payload: bytes) -> list[dict[str, Any]]:
    """The nodes of an XNNPACK delegate payload (its flatbuffer, decoded by flatc with the backend's schema)."""
    import importlib.resources

    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(payload[: XNNHeader.EXPECTED_LENGTH])
    graph = payload[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size]
    schema = importlib.resources.files("executorch.backends.xnnpack.serialization").joinpath("schema.fbs")
    with tempfile.TemporaryDirectory(prefix="deployforge-xnnpack-") as scratch:
        folder = Path(scratch)
        (folder / "schema.fbs").write_bytes(schema.read_bytes())
        (folder / "graph.bin").write_bytes(graph)
        _flatc_decompile(scratch, str(folder / "schema.fbs"), str(folder / "graph.bin"))
        text = (folder / "graph.json").read_text()
    # flatc writes non-finite floats (a ReLU's output_max) as bare inf / nan, which JSON has no word for
    text = re.sub(r":\s*(-?(?:inf|nan))\b", r': "\1"', text)
    return json.loads(text)["xnodes"]


def _conv_kind(node: dict[str, Any]) -> str:
    """``depthwise conv 7x7``, ``conv 3x3 stride 2``, ``fully connected``: what a convolution node computes."""
    kind = node["xnode_union_type"]
    if kind == "XNNFullyConnected":
        return "fully connected"
    fields = node["xnode_union"]
    if kind == "XNNDepthwiseConv2d":
        prefix = "depthwise conv"
    elif fields["groups"] > 1:
        prefix = "grouped conv"
    else:
        prefix = "conv"
    text = f"{prefix} {fields['kernel_height']}x{fields['kernel_width']}"
    stride = (fields["subsampling_height"], fields["subsampling_width"])
    if stride != (1, 1):
        text += f" stride {stride[0]}" if stride[0] == stride[1] else f" stride {stride[0]}x{stride[1]}"
    if (fields["dilation_height"], fields["dilation_width"]) != (1, 1):
        text += " dilated"
    if kind == "XNNDepthwiseConv2d" and fields["group_output_channels"] > 1:
        text += f" multiplier {fields['group_output_channels']}"
    return text


class _Program:
    """A ``.pte`` file read back: its plan's inputs, outputs, instructions and XNNPACK graphs."""

    def __init__(self, path: Path) -> None:
        data = Path(path).read_bytes()
        self.program, segment_base = _read_program(data)
        self.plan = next(plan for plan in self.program.execution_plan if plan.name == METHOD)
        self.calls: list[str] = []  # instruction order: an operator name, or a delegate's backend id
        self.xnnpack: list[list[dict[str, Any]]] = []  # the nodes of each XNNPACK call, in call order
        for chain in self.plan.chains:
            for instruction in chain.instructions:
                kind = type(instruction.instr_args).__name__
                if kind == "KernelCall":
                    operator = self.plan.operators[instruction.instr_args.op_index]
                    self.calls.append(f"{operator.name}.{operator.overload}" if operator.overload else operator.name)
                elif kind == "DelegateCall":
                    delegate = self.plan.delegates[instruction.instr_args.delegate_index]
                    self.calls.append(delegate.id)
                    if delegate.id == XNNPACK:
                        payload = _delegate_payload(self.program, data, segment_base, delegate)
                        self.xnnpack.append(_xnnpack_nodes(payload))

    def shapes(self, indices: list[int], prefix: str) -> dict[str, tuple[int | str, ...]]:
        return {f"{prefix}{i}": tuple(self.plan.values[index].val.sizes) for i, index in enumerate(indices)}


class ExecuTorchTarget:
    """A ``.pte`` program delegated to XNNPACK (FP32), run by ExecuTorch's Python runtime."""

    name = "executorch"
    runtime = "executorch"
    package = "executorch"
    extra = "executorch"
    rewrites: tuple[str, ...] = (SPLIT_DW7X7,)

    def files(self, model: str) -> tuple[str, ...]:
        """``MODEL.pte``."""
        return (f"{model}.pte",)

    def require(self) -> None:
        """Check that ExecuTorch's exporter, XNNPACK partitioner and runtime import.

        Raises:
            MissingExtra: they do not.
        """
        import importlib

        modules = (
            "executorch.exir",
            "executorch.backends.xnnpack.partition.xnnpack_partitioner",
            "executorch.runtime",
        )
        try:
            with _quiet():
                for module in modules:
                    importlib.import_module(module)
        except ImportError as error:
            raise MissingExtra(self.name, self.package, self.extra) from error

    def export(
        self, model: nn.Module, example: torch.Tensor, directory: Path, name: str, options: TargetOptions
    ) -> dict[str, str]:
        """Capture ``model`` at ``example``'s shape, lower it to XNNPACK, write ``NAME.pte``.

        Raises:
            ExportRefused: some ops stay outside XNNPACK and ``options.allow_partial`` is not set.
        """
        self.require()
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        model, rewritten = apply_rewrites(model, options.rewrites)
        facts: dict[str, str] = {"backend": "XNNPACK, FP32", **rewritten}
        was_training = model.training
        model.eval()
        try:
            program = torch.export.export(model, (example,))
        finally:
            model.train(was_training)
        program, group_norms = _decompose_group_norms(program)
        if group_norms:
            facts["group norms"] = f"{group_norms} as two-pass mean and variance (delegated)"
        _keepdim_means(program)
        with _quiet():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        delegated, outside = _delegation(edge.exported_program().graph_module)
        total = sum(delegated.values()) + sum(outside.values())
        if outside and not options.allow_partial:
            raise ExportRefused(
                f"{name}: {sum(outside.values())} of {total} ops stay outside XNNPACK "
                f"({_histogram_text(outside)}), run by ExecuTorch's portable kernels; "
                "--allow-partial accepts a partly delegated program"
            )
        (directory / self.files(name)[0]).write_bytes(edge.to_executorch().buffer)
        facts["delegated"] = f"{sum(delegated.values())} of {total} ops to XNNPACK"
        facts["outside"] = _histogram_text(outside)
        return facts

    def _load_method(self, path: Path, threads: int, etdump: bool = False) -> tuple[Any, Any]:
        """``(program, forward method)`` with the runtime's threadpool at ``threads`` threads."""
        with _quiet():
            from executorch.runtime import Runtime

            _size_threadpool(threads)
            program = Runtime.get().load_program(Path(path), enable_etdump=etdump)
        return program, program.load_method(METHOD)

    def load(self, path: Path, threads: int = 1) -> Runner:
        """The program's ``forward`` in ExecuTorch's runtime, on an XNNPACK threadpool of ``threads`` threads.

        The threadpool is the runtime's, one per process, and a loaded XNNPACK program keeps using the pool it
        was loaded with: it is resized only while no runner of this target is alive.

        Raises:
            InvalidSetting: a live runner holds the threadpool at another size.
        """
        runner = _Runner(self._load_method(path, threads)[1])
        _LIVE_RUNNERS.add(runner)
        return runner

    def describe(self, path: Path) -> ArtifactDescription:
        """Inputs and outputs of the plan, its kernel and delegate calls, and the nodes inside XNNPACK.

        ``ops`` counts each operator the plan calls outside a delegate (``aten::mean.out``), each delegate call
        by backend (``XnnpackBackend``) and each node of the XNNPACK graphs (``xnnpack XNNConv2d``).
        """
        read = _Program(path)
        ops: Counter[str] = Counter(read.calls)
        kinds: Counter[str] = Counter()
        for nodes in read.xnnpack:
            ops.update(f"xnnpack {node['xnode_union_type']}" for node in nodes)
            kinds.update(_conv_kind(node) for node in nodes if node["xnode_union_type"] in _CONV_NODES)
        delegate_calls = sum(1 for call in read.calls if call == XNNPACK)
        return ArtifactDescription(
            inputs=read.shapes(list(read.plan.inputs), "input"),
            outputs=read.shapes(list(read.plan.outputs), "output"),
            ops=dict(ops),
            size_bytes=size_on_disk(path),
            facts={
                "calls": f"{delegate_calls} XNNPACK, {len(read.calls) - delegate_calls} portable",
                "convolutions": _histogram_text(kinds),
            },
        )

    def profile(self, path: Path, inputs: np.ndarray, threads: int = 1) -> dict[str, float]:
        """Seconds per op kind, from ExecuTorch's ETDump with XNNPACK's per-operator events.

        ``inputs`` is run once to warm up, then batch by batch; each op counts its fastest run (on a shared
        machine another process's time lands in random ops; the fastest run is the op's own). Convolutions are
        named by what they compute and the XNNPACK path that ran them, e.g. ``depthwise conv 7x7 [IGEMM]`` or
        ``depthwise conv 3x3 [DWConv]``; other XNNPACK operators by XNNPACK's name (``GELU (NC)``); ops outside
        XNNPACK as ``portable NAME``.

        Args:
            path: the ``.pte`` file.
            inputs: ``(N, 3, H, W)`` float32 inputs, N a multiple of the program's batch (e.g. 30 single images).
            threads: XNNPACK threadpool size.

        Returns:
            Op kind → seconds per run, most expensive first.

        Raises:
            RuntimeError: this ExecuTorch build records no events (built without its event tracer).
        """
        import torch

        read = _Program(path)
        program, method = self._load_method(path, threads, etdump=True)
        batch = int(read.plan.values[read.plan.inputs[0]].val.sizes[0])
        array = np.ascontiguousarray(inputs, dtype=np.float32)
        groups = [torch.from_numpy(array[i : i + batch]) for i in range(0, len(array) - batch + 1, batch)]
        for tensor in groups[:1] + groups:
            method.execute([tensor])
        with tempfile.TemporaryDirectory(prefix="deployforge-etdump-") as scratch:
            etdump = str(Path(scratch) / "run.etdp")
            program.write_etdump_result_to_file(etdump, str(Path(scratch) / "debug.bin"))
            with _quiet():
                from executorch.devtools import Inspector

                inspector = Inspector(etdump_path=etdump)
        events = [event for block in inspector.event_blocks if block.name == "Execute" for event in block.events]
        if not any(event.perf_data for event in events):
            raise RuntimeError("this ExecuTorch build records no ETDump events (built without its event tracer)")
        return _kind_seconds(events, [node for nodes in read.xnnpack for node in nodes])


def _kind_seconds(events: list[Any], nodes: list[dict[str, Any]]) -> dict[str, float]:
    """Sum the fastest run (after the warm-up) of each op event, by kind."""
    convs = [node for node in nodes if node["xnode_union_type"] in _CONV_NODES]
    conv_events = [event for event in events if event.name.startswith(_CONV_EVENTS)]
    # XNNPACK runs convolutions in node order; match them only if the counts agree
    kinds = iter(_conv_kind(node) for node in convs) if len(convs) == len(conv_events) else None
    seconds: Counter[str] = Counter()
    for event in events:
        if event.name in _FRAME_EVENTS or not event.perf_data:
            continue
        runs = list(event.perf_data.raw)
        fastest = min(runs[1:] or runs) / 1e3  # the inspector reports milliseconds
        name = event.name.split(" #")[0]
        if event.name.startswith(_CONV_EVENTS):
            path = name.rsplit(") ", 1)[-1]  # "Convolution (NHWC, F32) IGEMM" -> "IGEMM"
            kind = next(kinds) if kinds is not None else name.split(" (")[0].lower()
            name = f"{kind} [{path}]"
        elif name.startswith("native_call_"):
            name = "portable " + name.removeprefix("native_call_")
        seconds[name] += fastest
    return {kind: round(value, 9) for kind, value in sorted(seconds.items(), key=lambda item: -item[1])}


class _Runner:
    """A loaded ``forward``: numpy in, numpy out (a class, so that live runners can be tracked weakly)."""

    def __init__(self, method: Any) -> None:
        self._method = method

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        return self._method.execute([tensor])[0].numpy().copy()


_LIVE_RUNNERS: weakref.WeakSet[_Runner] = weakref.WeakSet()


def _size_threadpool(threads: int) -> None:
    """Size the runtime's threadpool, which XNNPACK runs on, to ``threads`` before a program is loaded.

    ``_unsafe_reset_threadpool`` replaces the pool under every XNNPACK program already loaded (running one
    afterwards aborts the process), so the size changes only while no runner is alive.

    Raises:
        InvalidSetting: a live runner uses the pool at another size.
    """
    with _quiet():
        from executorch.extension.pybindings import portable_lib

    current = portable_lib._threadpool_get_thread_count()
    if current == threads:
        return
    if len(_LIVE_RUNNERS):
        raise InvalidSetting(
            "threads",
            f"ExecuTorch's threadpool is process-wide and a loaded program runs on it with {current} threads; "
            f"release the other ExecuTorch runners before loading one with {threads}",
        )
    portable_lib._unsafe_reset_threadpool(threads)


TARGET = ExecuTorchTarget()
