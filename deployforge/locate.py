"""Find the first layer where an exported artifact departs from the original, named by its source module path.

``verify`` says *whether* an artifact's logits depart from the original; this says *where*. Every candidate
artifact of an export (the deployed ONNX, the multi-branch ONNX, the Core ML package) is run once with its
intermediate values kept, each value is mapped back to the torch module that produced it, and it is compared
with the same module's output in the original (forward hooks on the original rebuilt from the manifest's
weights, on the first :data:`LOCATE_IMAGES` images of the parity batch), by rel-L2 against the artifact's own
tolerance (:data:`deployforge.parity.TOLERANCES`). Layers are listed in the order the original completes them (a
module after its children), so the first one over the tolerance is the innermost comparable module where the
numbers first go wrong.

**Which modules are comparable.** Fuse and reparameterize rewrite modules inside a block: a folded BatchNorm
becomes ``Identity`` (no node in any artifact), the conv before it now outputs what the BatchNorm did, branches
of a multi-branch block merge into one ``reparam_conv`` the original does not have, layer scales and norms fold
into the next conv. A module path present in both models does not mean the same value. So a module is compared
only where its value survives the rewrite: it exists in the original, it runs once and returns one tensor, and
in the model the artifact was converted from (the reparameterized model for the deployed files, the original
itself for the multi-branch ONNX) the same module path returns the same value as in the original, within
:data:`SAME_VALUE`. A rewritten value differs at order one, float rounding at order 1e-6, so the bound is wide
apart from both. What survives is what the deployed model is made of: blocks, stages, token mixers, the
parents of merged convs, convs without a BatchNorm, norms and activations that were not folded, the head.
This rule is measured, not a list of class names, so it holds for every family and for whatever fuse and
reparameterize fold next.

**How artifacts plug in.** An artifact format contributes one function, :data:`ModuleOutputs`: given the
artifact, the inputs and the torch model it was converted from, the values it computes, keyed by module path.
ONNX's reads the exporter's node metadata (``pkg.torch.onnx.name_scopes``: the module path of every node) and
runs the graph with onnxruntime, every module's output added as a graph output. Core ML's runs the package in
the reference interpreter (``deployforge.mlprogram``) with every value kept, and maps MIL value names back
through a ``torch.export`` capture of the source model (the converter names values after FX nodes; FX nodes
carry their ``nn_module_stack``).
"""

from __future__ import annotations

import ast
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .artifact_parity import fit_batch
from .errors import DeployforgeError
from .fuse import fuse_batchnorm
from .golden import read_golden
from .manifest import Manifest, read_manifest
from .options import Capture
from .parity import TOLERANCES
from .pipeline import Progress, rebuild_original
from .registry import rebuildable_spec
from .reparam import reparameterize

# The rel-L2 under which a module's output in the model an artifact was converted from is "the same value" as
# in the original (see the module docstring): float rounding of the merges is ~1e-6, a rewritten value O(1).
SAME_VALUE = 1e-3
# Images of the parity batch the search runs on (its first ones; a fixed-batch export gets them repeated). A
# departure is a property of a layer, not a statistic of the batch, and every comparable layer's output is kept
# for the original and each artifact: FastViT-T8 at 256 px peaked at 3.4 GB with the whole batch of 8.
LOCATE_IMAGES = 2
# The exporter's per-node module scopes: ['', 'stages', 'stages.0', ..., '<fx node name>'].
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
ROOT = ""  # the whole model's path; its output is the logits
# coremltools names a value computed in another precision after its FX node: ``conv2d_3_cast_fp16``.
_MIL_CAST = re.compile(r"_cast_fp(16|32)$")

ModuleOutputs = Callable[[Path, np.ndarray, nn.Module], dict[str, np.ndarray]]
"""``(artifact, inputs, source model) -> {module path: value}``: what an artifact computes on a batch, by the module
path of the model it was converted from (``""`` for the logits). A format whose files do not record module paths
maps its value names back through a capture of the source model."""


class LocateUnavailable(Exception):
    """An artifact's intermediate values cannot be read here (no interpreter for its format, no node metadata)."""


@dataclass(frozen=True)
class LayerError:
    """One module's output in an artifact against the same module's in the original.

    Attributes:
        module: the source module path (``""`` is the whole model: the logits).
        rel_l2: ``‖a − b‖₂ / ‖b‖₂`` over the batch (infinite when the artifact's value has another size).
        max_abs: largest absolute difference.
        ok: rel-L2 is within the artifact's tolerance (NaN never is).
    """

    module: str
    rel_l2: float
    max_abs: float
    ok: bool


@dataclass(frozen=True)
class Location:
    """Every comparable layer of one artifact, in the original's execution order.

    Attributes:
        file: the artifact's file name in the export directory.
        stage: its waterfall stage (``onnx``, ``onnx-multibranch``, ``coreml-fp32``, ``coreml-fp16``).
        tolerance: the rel-L2 bound of that stage, applied to every layer.
        layers: the comparisons, in execution order.
        unavailable: why the artifact's format cannot be searched here (no interpreter), or ``None``.
        error: why the artifact failed to run (a broken file: that is a departure too), or ``None``.
        seconds: wall time of the artifact's run and comparisons.
    """

    file: str
    stage: str
    tolerance: float
    layers: tuple[LayerError, ...]
    unavailable: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def first_departure(self) -> LayerError | None:
        """The first layer over tolerance, or ``None`` when nothing departs."""
        return next((layer for layer in self.layers if not layer.ok), None)


@dataclass(frozen=True)
class LocateReport:
    """The layer-by-layer search of every candidate artifact of one export.

    Attributes:
        model: registry name.
        directory: the export directory.
        locations: one per candidate artifact, in manifest order.
    """

    model: str
    directory: Path
    locations: tuple[Location, ...]

    @property
    def departures(self) -> list[str]:
        """One line per artifact that departs (its first departing layer) or fails to run."""
        lines = []
        for loc in self.locations:
            first = loc.first_departure
            if loc.error is not None:
                lines.append(f"{loc.file}: {loc.error}")
            elif first is not None:
                module = first.module or "(logits)"
                lines.append(f"{loc.file}: departs at {module} (rel-L2 {first.rel_l2:.3g} > {loc.tolerance:g})")
        return lines

    @property
    def searched(self) -> bool:
        """Whether at least one artifact was searched (others may be unavailable here)."""
        return any(loc.unavailable is None for loc in self.locations)


def _run_hooked(model: nn.Module, inputs: torch.Tensor, record: Callable[[str, object], None]) -> Counter[str]:
    """Run ``model`` on ``inputs`` calling ``record(path, output)`` as each module returns; count each path's calls."""
    calls: Counter[str] = Counter()

    def recorder(path: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            calls[path] += 1
            record(path, output)

        return hook

    handles = [module.register_forward_hook(recorder(path)) for path, module in model.named_modules()]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def module_outputs(model: nn.Module, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """Run ``model`` on ``inputs`` and keep every module's output, by module path, in completion order.

    Only modules that run once and return one tensor are kept (a module called twice has no single output
    to compare). The root module is kept under ``""``. Each output is copied as its module returns (a later
    in-place op cannot change it); modules that return the very same, unchanged tensor (a block returning its
    activation's output, an ``Identity``) share one array object, which :func:`name_once` names once.
    """
    outputs: dict[str, np.ndarray] = {}
    seen: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # holding the tensor keeps its id unique

    def record(path: str, output: object) -> None:
        if not isinstance(output, torch.Tensor):
            return
        value = output.numpy()
        first = seen.get(id(output))
        if first is not None and np.array_equal(first[1], value):
            outputs[path] = first[1]
            return
        seen[id(output)] = (output, value.copy())
        outputs[path] = seen[id(output)][1]

    calls = _run_hooked(model, inputs, record)
    return {path: value for path, value in outputs.items() if calls[path] == 1}


def name_once(outputs: dict[str, np.ndarray], model: nn.Module) -> dict[str, np.ndarray]:
    """Name every value once where several modules return the very same tensor (see :func:`module_outputs`).

    The name kept is the innermost module with children among them: ``stem.0`` rather than its last op
    ``stem.0.act`` (a fault in the block's conv first shows in the act's output, which is the block's), and
    ``stages.3.blocks.1`` rather than the containers that end with it (``stages.3``, ``stages``), the smallest
    module that holds the computation. If all are leaves (an ``Identity`` passing a sibling's output on), the
    first, which computed it. The whole model (``""``, the logits) always keeps its own row, last.
    """
    leaves = {path for path, module in model.named_modules() if next(module.children(), None) is None}
    groups: dict[int, list[str]] = {}
    for path, value in outputs.items():
        if path != ROOT:
            groups.setdefault(id(value), []).append(path)
    kept = {ROOT}
    for paths in groups.values():  # each group in completion order: inner modules first
        kept.add(next((path for path in paths if path not in leaves), paths[0]))
    return {path: value for path, value in outputs.items() if path in kept}


def _rel_l2(candidate: np.ndarray, original: np.ndarray) -> tuple[float, float]:
    """rel-L2 and max-abs of ``candidate`` against ``original`` in float64; infinite when the sizes differ."""
    if candidate.size != original.size:
        return float("inf"), float("inf")
    a = np.asarray(candidate, dtype=np.float64).reshape(-1)
    b = np.asarray(original, dtype=np.float64).reshape(-1)
    diff = np.linalg.norm(a - b)
    norm = np.linalg.norm(b)
    return float(diff / norm if norm > 0 else diff), float(np.abs(a - b).max(initial=0.0))


def surviving(source: nn.Module, inputs: torch.Tensor, original: dict[str, np.ndarray]) -> list[str]:
    """Module paths whose output in ``source`` (the model an artifact was converted from) is the original's.

    Each output is compared as its module returns, nothing of ``source`` is kept.

    Args:
        source: the converted-from model.
        inputs: the batch ``original`` was recorded on.
        original: the original's module outputs (:func:`module_outputs`).

    Returns:
        The comparable paths, in the original's execution order (see the module docstring).
    """
    same: dict[str, bool] = {}

    def record(path: str, output: object) -> None:
        reference = original.get(path)
        if isinstance(output, torch.Tensor) and reference is not None and tuple(output.shape) == reference.shape:
            same[path] = _rel_l2(output.numpy(), reference)[0] <= SAME_VALUE

    calls = _run_hooked(source, inputs, record)
    return [path for path in original if same.get(path) and calls[path] == 1]


def compare_layers(
    candidate: dict[str, np.ndarray], original: dict[str, np.ndarray], paths: Iterable[str], tolerance: float
) -> tuple[LayerError, ...]:
    """Compare an artifact's module outputs with the original's at ``paths`` (those the artifact has), in order."""
    rows = []
    for path in paths:
        if path not in candidate:
            continue
        rel, max_abs = _rel_l2(candidate[path], original[path])
        rows.append(LayerError(path, rel, max_abs, bool(rel <= tolerance)))
    return tuple(rows)


def node_scopes(node: onnx.NodeProto) -> tuple[str, ...]:
    """The module paths a node was exported from, outermost first (root ``""`` included); none without metadata."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            return tuple(ast.literal_eval(prop.value)[:-1])  # the last scope is the fx node's own name
    return ()


def onnx_module_values(
    graph: onnx.GraphProto, scopes_of: Callable[[onnx.NodeProto], tuple[str, ...]] = node_scopes
) -> dict[str, str]:
    """Map each module path to the ONNX value that is its output, read from the exporter's node metadata.

    A module's output is the one value computed inside its scope (from the graph input, not a constant) that
    is read outside it or is a graph output. A module with no such value (folded away) or several (it returns
    more than one tensor, or the exporter moved nodes across its boundary) is left out. A node without module
    paths in a graph that has them is placed by its neighbours (:func:`_placed_scopes`).

    Args:
        graph: an ONNX graph written by torch's dynamo exporter.
        scopes_of: a node's module paths (default: its own metadata, :func:`node_scopes`).

    Returns:
        module path → value name, in node order of the modules' first nodes.
    """
    dynamic = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted
        if any(name in dynamic for name in node.input):
            dynamic.update(node.output)
    chains = _placed_scopes(graph.node, scopes_of, dynamic)
    producer_scopes = {
        name: set(chain)
        for node, chain in zip(graph.node, chains, strict=True)
        if any(name in dynamic for name in node.input)
        for name in node.output
    }
    readers = [(set(chain), list(node.input)) for node, chain in zip(graph.node, chains, strict=True)]
    return _crossing_values(producer_scopes, readers, [output.name for output in graph.output])


def _placed_scopes(
    nodes: Iterable[onnx.NodeProto], scopes_of: Callable[[onnx.NodeProto], tuple[str, ...]], dynamic: set[str]
) -> list[tuple[str, ...]]:
    """Every node's module paths, outermost first; a node without them gets the paths its neighbours share.

    Graph rewrites write nodes without metadata: the exporter's own optimizer turns a ``chunk`` into a bare
    ``Split`` (onnxscript issue 2637), and a value onnxsim names anew has no scopes to borrow. Taken as it is,
    such a node is outside every module, the whole model included: each value it reads looks like one more
    output of every module around it, and those modules (the logits first) are left out for having several.
    It is placed instead in the innermost module holding both the computed values it reads and the nodes
    reading its outputs (the longest common prefix of their paths, nodes placed before it in graph order
    counting), else in the whole model alone. A graph with no module paths at all is left without them.
    """
    nodes = list(nodes)
    chains = [tuple(scopes_of(node)) for node in nodes]
    if not any(chains):
        return chains
    made_by = {name: i for i, node in enumerate(nodes) for name in node.output}
    read_by: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            read_by.setdefault(name, []).append(i)
    for i, node in enumerate(nodes):
        if chains[i]:
            continue
        around = [chains[made_by[name]] for name in node.input if name in dynamic and name in made_by]
        around += [chains[j] for name in node.output for j in read_by.get(name, ())]
        known = [chain for chain in around if chain]
        shared = takewhile(lambda level: len(set(level)) == 1, zip(*known, strict=False))
        chains[i] = tuple(level[0] for level in shared) or (ROOT,)
    return chains


def _crossing_values(
    producers: dict[str, set[str]], readers: Iterable[tuple[set[str], list[str]]], outputs: list[str]
) -> dict[str, str]:
    """Module path → the one value made inside it and read outside it (or a graph output), if exactly one.

    Args:
        producers: every input-dependent value → the module paths of the operation that computed it.
        readers: ``(module paths, input value names)`` of every operation, in graph order.
        outputs: the graph's output value names.
    """
    crossing: dict[str, set[str]] = {}
    for scopes, names in readers:
        for name in names:
            for path in producers.get(name, set()) - scopes:
                crossing.setdefault(path, set()).add(name)
    for name in outputs:
        for path in producers.get(name, set()):
            crossing.setdefault(path, set()).add(name)
    return {path: next(iter(names)) for path, names in crossing.items() if len(names) == 1}


def fx_module_values(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Map each module path to the FX node that is its output in a ``torch.export`` capture.

    The same rule as :func:`onnx_module_values`, on the capture's ``nn_module_stack`` metadata. Converters
    that name their values after the FX nodes (coremltools' torch.export frontend) map back through this.
    """
    graph = program.graph
    user_inputs = set(program.graph_signature.user_inputs)
    dynamic: set[str] = set()
    producers: dict[str, set[str]] = {}
    readers = []
    outputs: list[str] = []
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.name in user_inputs:
                dynamic.add(node.name)
            continue
        names = [arg.name for arg in node.all_input_nodes]
        if node.op == "output":
            outputs = [name for name in names if name in dynamic]
            continue
        scopes = {ROOT, *(path for path, _ in (node.meta.get("nn_module_stack") or {}).values())}
        readers.append((scopes, names))
        if any(name in dynamic for name in names):
            dynamic.add(node.name)
            producers[node.name] = scopes
    return _crossing_values(producers, readers, outputs)


def onnx_module_outputs(path: Path, inputs: np.ndarray, source: nn.Module | None = None) -> dict[str, np.ndarray]:
    """Run an ONNX artifact with onnxruntime, every module's output added as a graph output (:data:`ModuleOutputs`).

    The exporter recorded every node's module path in the graph. onnxsim drops that metadata from the nodes
    it writes, but keeps value names: a graph without it is mapped through the scopes of a fresh export of
    ``source`` (the same exporter, opset and batch), by the names of the values each node computes. The added
    outputs take their types from onnx's shape inference.

    Raises:
        LocateUnavailable: no node carries module scopes, and none can be borrowed from an export of ``source``.
    """
    import onnxruntime as ort

    model = onnx.load(path)
    values = onnx_module_values(model.graph)
    if set(values) <= {ROOT} and source is not None:
        scopes = _exported_scopes(model, source, inputs)
        values = onnx_module_values(model.graph, lambda node: next(map(scopes.get, node.output), None) or ())
    if set(values) <= {ROOT}:
        raise LocateUnavailable("its nodes carry no module scopes (not written by torch's dynamo exporter)")
    typed = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name: v for v in (*typed.value_info, *typed.output)}
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(known[name] for name in dict.fromkeys(values.values()) if name not in present)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(names, {session.get_inputs()[0].name: inputs}), strict=True))
    return {module: results[name] for module, name in values.items() if name in results}


def _exported_scopes(model: onnx.ModelProto, source: nn.Module, inputs: np.ndarray) -> dict[str, tuple[str, ...]]:
    """Value name → module paths of its node, in a fresh export of ``source`` at ``model``'s opset and batch."""
    from .targets import onnx as onnx_export
    from .trace import trace

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    probe = torch.from_numpy(inputs[:2])
    exported = onnx_export.export_onnx(trace(source, probe), probe, opset, dim.dim_value or None)
    return {name: node_scopes(node) for node in exported.graph.node for name in node.output}


def coreml_module_outputs(path: Path, inputs: np.ndarray, source: nn.Module) -> dict[str, np.ndarray]:
    """Interpret a Core ML package with every intermediate kept (:data:`ModuleOutputs`), as float32.

    The package records no module paths. coremltools' ``torch.export`` frontend names each MIL value after
    the FX node it converts (``conv2d_3``; ``conv2d_3_cast_fp16`` in an FP16 program), so ``source`` is
    captured again the way :func:`deployforge.targets.coreml.export_coreml` captured it, and the FX node that
    is each module's output (:func:`fx_module_values`) names the MIL value to read. A value the converter's
    passes fused away or renamed is left out; the whole model's output is the program's output.

    Raises:
        LocateUnavailable: the ML program interpreter (``deployforge.mlprogram``) is not installed, or the
            model is not captured by ``torch.export`` (the fallback's value names map to no module).
    """
    try:
        from .mlprogram import load_program
    except ImportError:
        raise LocateUnavailable(
            "Core ML intermediates are not available yet: no ML program interpreter is installed"
        ) from None
    from .trace import capture

    program = load_program(path)
    (name, shape), output = next(iter(program.input_shapes.items())), program.output_names[0]
    traced = capture(source, torch.from_numpy(inputs[: shape[0]]), dynamic_batch=False)
    if traced.capture is not Capture.TORCH_EXPORT:
        raise LocateUnavailable(f"the model is not captured by torch.export ({traced.fallback_reason})")
    nodes = fx_module_values(traced.program.run_decompositions({}))
    values: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs), shape[0]):  # a package's batch at a time: only module outputs are kept
        kept = program.run({name: inputs[start : start + shape[0]]}, keep=True)
        by_node = {_MIL_CAST.sub("", value): array for value, array in kept.items()}
        for module, node in nodes.items():
            if node in by_node and module != ROOT:
                values.setdefault(module, []).append(by_node[node])
        values.setdefault(ROOT, []).append(kept[output])
    return {module: np.concatenate(parts).astype(np.float32) for module, parts in values.items()}


@dataclass(frozen=True)
class _Candidate:
    """A searchable artifact: its stage, tolerance, how to read it and which model it was converted from."""

    stage: str
    tolerance: float
    outputs: ModuleOutputs
    from_original: bool  # converted from the original itself, not from the reparameterized model


def _candidate(name: str, manifest: Manifest) -> _Candidate | None:
    if name.endswith(".multibranch.onnx"):
        return _Candidate("onnx-multibranch", TOLERANCES.onnx, onnx_module_outputs, True)
    if name.endswith(".onnx"):
        return _Candidate("onnx", TOLERANCES.onnx, onnx_module_outputs, False)
    if name.endswith(".mlpackage"):
        stage = f"coreml-{manifest.settings.precision.value}"
        return _Candidate(stage, TOLERANCES.for_stage(stage), coreml_module_outputs, False)
    return None


def locate_directory(directory: Path, progress: Progress = lambda _: None) -> LocateReport:
    """Search every candidate artifact of one export for the first layer that departs from the original.

    Args:
        directory: ``OUT/MODEL`` with ``manifest.json``.
        progress: called as each step starts.

    Returns:
        One :class:`Location` per candidate artifact present (an artifact whose format cannot be read here has
        ``unavailable`` set and no layers).

    Raises:
        DeployforgeError: no manifest, unknown model, the export's weights file is gone or its random weights
            cannot be conditioned as the export did, or no candidate artifact in the directory.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    spec = rebuildable_spec(manifest.model, manifest.origin, manifest.output.classes)
    found = [
        (name, candidate)
        for name in manifest.artifacts
        if (candidate := _candidate(name, manifest)) is not None and (directory / name).exists()
    ]
    if not found:
        raise DeployforgeError(f"no ONNX or Core ML artifact in {directory}; re-run `deployforge export`")
    progress(f"{spec.name}: rebuild the original and record every module's output")
    original = rebuild_original(spec, manifest.weights)  # as verify rebuilds it
    parity = read_golden(directory, manifest.input.mean, manifest.input.std).batch.inputs  # what export compared
    inputs = torch.from_numpy(fit_batch(parity[:LOCATE_IMAGES], manifest.input.fixed_batch))
    reference = name_once(module_outputs(original, inputs), original)
    sources = {True: (original, list(reference))}  # from_original -> (source model, comparable paths)
    if not all(candidate.from_original for _, candidate in found):
        progress(f"{spec.name}: fuse and reparameterize, find the modules whose outputs survive")
        fused, _ = fuse_batchnorm(original, inputs[:2])
        merged, _ = reparameterize(fused)
        sources[False] = (merged, surviving(merged, inputs, reference))
    locations = []
    for name, candidate in found:
        progress(f"{spec.name}: run {name} with every module's output kept")
        started = time.perf_counter()
        source, paths = sources[candidate.from_original]
        try:
            values = candidate.outputs(directory / name, inputs.numpy(), source)
        except LocateUnavailable as reason:
            locations.append(Location(name, candidate.stage, candidate.tolerance, (), unavailable=str(reason)))
            continue
        except Exception as error:  # noqa: BLE001 - an artifact that cannot run is a finding, not a crash
            failure = f"cannot run it ({type(error).__name__})"
            locations.append(Location(name, candidate.stage, candidate.tolerance, (), error=failure))
            continue
        layers = compare_layers(values, reference, paths, candidate.tolerance)
        seconds = round(time.perf_counter() - started, 3)
        locations.append(Location(name, candidate.stage, candidate.tolerance, layers, seconds=seconds))
    return LocateReport(spec.name, directory, tuple(locations))
