"""Runtime graph audit: what onnxruntime makes of an exported ONNX graph.

onnxruntime rewrites a graph before running it (``ORT_ENABLE_ALL``): it fuses activation chains into
contrib ops (``com.microsoft.Gelu``, ``FusedConv`` ...) and, on the CPU, moves convolutions to its blocked
NCHWc layout, inserting ``ReorderInput``/``ReorderOutput`` wherever an op it cannot run blocked sits between
two convs. A graph whose activation is written in a form the fusions do not match keeps its primitive ops,
and each of them splits the blocked region: slower, with no error anywhere. This module loads a graph the way
the latency protocol does, saves onnxruntime's optimized graph and counts what is in it
(docs/design.md, "Runtime graph audit").

No torch here: the audit runs on any ``.onnx`` file.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

FUSED_DOMAIN = "com.microsoft"  # contrib ops: every one in an optimized graph of a standard-ONNX file is a fusion
LAYOUT_DOMAIN = "com.microsoft.nchwc"  # the blocked-layout kernels and the reorders between layouts
REORDERS = ("ReorderInput", "ReorderOutput")
_NORM_ROOTS = frozenset({"Pow", "Sqrt"})
_NORM_WALK = frozenset({"Sub", "Mul", "Pow", "ReduceMean", "Add", "Div", "Sqrt", "Reciprocal", "Cast"})


@dataclass(frozen=True)
class GraphAudit:
    """Op counts of onnxruntime's optimized graph (CPU, ``ORT_ENABLE_ALL``).

    Attributes:
        nodes: node count of the optimized graph.
        ops: op histogram; an op of a non-default domain is prefixed with it
            (``com.microsoft.FusedConv``, ``com.microsoft.nchwc.ReorderInput``).
        fused: the ``com.microsoft`` contrib ops onnxruntime's fusions made (``Gelu``, ``QuickGelu``,
            ``FusedConv``, ``FusedMatMul``, ``SkipLayerNormalization`` ...), by the same names as ``ops``. The
            blocked-layout kernels (``com.microsoft.nchwc``) are in ``ops`` only.
        reorders: ``ReorderInput`` + ``ReorderOutput`` nodes (layout changes around ops that cannot run in
            the NCHWc layout).
        erf: ``Erf`` nodes left: an exact GELU whose form the GELU fusion did not match.
        sigmoid_mul: ``x · sigmoid(x)`` (SiLU/Swish) left as a ``Sigmoid`` and a ``Mul`` that reads the
            Sigmoid's own input; a gate ``x · sigmoid(f(x))`` (squeeze-excite) is not counted.
        norm_chain: ``Pow``/``Sqrt`` nodes of a normalization written out as ``ReduceMean`` arithmetic
            (mean, variance, square root) that no LayerNormalization fusion replaced.
    """

    nodes: int
    ops: dict[str, int] = field(default_factory=dict)
    fused: dict[str, int] = field(default_factory=dict)
    reorders: int = 0
    erf: int = 0
    sigmoid_mul: int = 0
    norm_chain: int = 0

    def warnings(self) -> list[str]:
        """One line per pattern onnxruntime left unfused (empty when the graph is fully optimized)."""
        lines = []
        if self.erf:
            lines.append(f"{self.erf} Erf nodes left unfused by onnxruntime (GELU in a form its fusion does not match)")
        if self.sigmoid_mul:
            lines.append(
                f"{self.sigmoid_mul} x·sigmoid(x) chains left unfused by onnxruntime (SiLU/Swish as Sigmoid and Mul)"
            )
        if self.norm_chain:
            lines.append(
                f"{self.norm_chain} Pow/Sqrt nodes of normalization chains left unfused by onnxruntime "
                "(a norm written as ReduceMean arithmetic)"
            )
        return lines


def _op_name(node: onnx.NodeProto) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _count_sigmoid_mul(nodes: list[onnx.NodeProto], readers: dict[str, list[onnx.NodeProto]]) -> int:
    count = 0
    for node in nodes:
        if node.op_type != "Sigmoid" or node.domain not in ("", "ai.onnx"):
            continue
        source, gate = node.input[0], node.output[0]
        if any(r.op_type == "Mul" and source in r.input and gate in r.input for r in readers.get(gate, [])):
            count += 1
    return count


def _count_norm_chains(nodes: list[onnx.NodeProto], producer: dict[str, onnx.NodeProto], limit: int = 6) -> int:
    """``Pow``/``Sqrt`` nodes with a ``ReduceMean`` within ``limit`` arithmetic steps upstream."""

    def reaches_mean(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None or depth > limit or node.op_type not in _NORM_WALK:
            return False
        if node.op_type == "ReduceMean":
            return True
        return any(reaches_mean(i, depth + 1) for i in node.input if i)

    return sum(
        1
        for node in nodes
        if node.op_type in _NORM_ROOTS
        and node.domain in ("", "ai.onnx")
        and any(reaches_mean(i, 1) for i in node.input[:1])
    )


def audit_graph(model: onnx.ModelProto) -> GraphAudit:
    """Count fused ops, layout reorders and unfused patterns in an (already optimized) graph.

    Subgraphs (``If``/``Loop`` bodies) are not entered; the exported vision models have none.

    Args:
        model: a graph, typically onnxruntime's optimized graph as written by :func:`optimized_graph`.

    Returns:
        The counts.
    """
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output if out}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in set(node.input):
            if name:
                readers.setdefault(name, []).append(node)
    ops = Counter(_op_name(node) for node in nodes)
    fused = Counter(_op_name(node) for node in nodes if node.domain == FUSED_DOMAIN)
    return GraphAudit(
        nodes=len(nodes),
        ops=dict(sorted(ops.items())),
        fused=dict(sorted(fused.items())),
        reorders=sum(1 for node in nodes if node.domain == LAYOUT_DOMAIN and node.op_type in REORDERS),
        erf=sum(1 for node in nodes if node.op_type == "Erf" and node.domain in ("", "ai.onnx")),
        sigmoid_mul=_count_sigmoid_mul(nodes, readers),
        norm_chain=_count_norm_chains(nodes, producer),
    )


def optimized_graph(source: Path | bytes, threads: int = 1) -> onnx.ModelProto:
    """Load ``source`` in onnxruntime (CPU, ``ORT_ENABLE_ALL``) and return the graph it will run.

    Args:
        source: an ``.onnx`` path or a serialized model.
        threads: intra-op threads of the session (the NCHWc pass does not depend on it).

    Returns:
        onnxruntime's optimized graph, as saved by ``SessionOptions.optimized_model_filepath``.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="deployforge-audit") as scratch:
        target = Path(scratch) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.optimized_model_filepath = str(target)
        options.log_severity_level = 3  # saving an NCHWc graph warns that it is tied to this CPU: known
        model = source if isinstance(source, bytes) else str(source)
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return onnx.load(str(target))


def audit_onnx(source: Path | bytes) -> GraphAudit:
    """Audit the graph onnxruntime runs for ``source`` (CPU, ``ORT_ENABLE_ALL``, 1 intra-op thread).

    Args:
        source: an ``.onnx`` path or a serialized model.

    Returns:
        The op histogram, fusions, layout reorders and unfused patterns of the optimized graph.
    """
    return audit_graph(optimized_graph(source, threads=1))
