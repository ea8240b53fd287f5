"""Stage 1: fold every BatchNorm into the conv or linear layer that alone feeds it.

Pairs are found on the ``torch.export`` graph of the model, not by module names, so a conv→BN pair
anywhere in any model is found, and a pair is folded only when the BN is the conv's **only** consumer:
if anything else reads the conv output (a residual, a second branch), folding would change the model.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from deployforge.models.blocks import Reparameterizable, fold_bn

# timm's conventions for a module that merges itself; deployforge's own blocks (Reparameterizable) are not among them
SELF_MERGING = ("reparameterize", "fuse", "switch_to_deploy")

_PRODUCERS = {
    torch.ops.aten.conv1d.default: (nn.Conv1d,),
    torch.ops.aten.conv2d.default: (nn.Conv2d,),
    torch.ops.aten.linear.default: (nn.Linear,),
}
_BATCH_NORMS = {
    torch.ops.aten.batch_norm.default,
    torch.ops.aten._native_batch_norm_legit_no_training.default,
}


@dataclass
class FuseReport:
    """What the fuse stage changed.

    Attributes:
        folded: ``(producer, batchnorm)`` module paths folded together.
        skipped: BatchNorms left in place, with the reason (no single conv/linear producer).
    """

    folded: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def find_foldable_pairs(
    model: nn.Module, example: torch.Tensor, program: torch.export.ExportedProgram | None = None
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Find ``(producer, batchnorm)`` module pairs that can be folded.

    Args:
        model: an eval-mode model.
        example: an input the model accepts (its values do not matter).
        program: a ``torch.export`` capture of ``model`` (any batch, static or dynamic) to read the graph
            from; ``None`` captures ``model`` on ``example`` here.

    Returns:
        The foldable pairs, and the BatchNorms that cannot be folded with the reason.
    """
    if program is None:
        program = torch.export.export(model, (example,))
    signature = program.graph_signature
    param_owner = {name: fqn.rsplit(".", 1)[0] for name, fqn in signature.inputs_to_parameters.items()}
    buffer_owner = {name: fqn.rsplit(".", 1)[0] for name, fqn in signature.inputs_to_buffers.items()}
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    calls = Counter(param_owner.get(str(n.args[1])) for n in nodes if n.target in _PRODUCERS)
    calls.update(buffer_owner.get(str(n.args[3])) for n in nodes if n.target in _BATCH_NORMS)

    merging_itself = self_merging_modules(model)
    pairs, skipped = [], {}
    for node in nodes:
        if node.target not in _BATCH_NORMS:
            continue
        bn_path = buffer_owner.get(str(node.args[3]))
        if bn_path is None:
            continue
        owner = next((p for p in merging_itself if bn_path.startswith(p + ".")), None)
        if owner is not None:
            skipped[bn_path] = f"inside {owner}, which merges itself (its own {merging_itself[owner]}())"
            continue
        producer = node.args[0]
        conv_path = param_owner.get(str(producer.args[1])) if producer.target in _PRODUCERS else None
        if conv_path is None:
            skipped[bn_path] = "input is not a conv or linear layer"
        elif len(producer.users) != 1:
            skipped[bn_path] = f"{conv_path} has {len(producer.users)} consumers"
        elif calls[conv_path] != 1 or calls[bn_path] != 1:
            skipped[bn_path] = "module is called more than once"
        elif not isinstance(model.get_submodule(conv_path), _PRODUCERS[producer.target]):
            skipped[bn_path] = f"{conv_path} is not a plain conv/linear module"
        elif _remainder(model.get_submodule(bn_path)) is None:
            skipped[bn_path] = f"{type(model.get_submodule(bn_path)).__name__} is a BatchNorm with a forward of its own"
        elif producer.target is torch.ops.aten.linear.default and producer.meta["val"].dim() != 2:
            skipped[bn_path] = "linear output is not (batch, features)"
        else:
            pairs.append((conv_path, bn_path))
    return pairs, skipped


def self_merging_modules(model: nn.Module) -> dict[str, str]:
    """Modules from outside deployforge's blocks that merge themselves by one of timm's conventions.

    Their BatchNorms are left to them: a module's own ``reparameterize()`` reads its BatchNorms as it built them.

    Returns:
        ``module path -> method`` (the first of :data:`SELF_MERGING` it has), outermost modules only.
    """
    found: dict[str, str] = {}
    for path, module in model.named_modules():
        if not path or isinstance(module, Reparameterizable) or any(path.startswith(p + ".") for p in found):
            continue
        method = next((m for m in SELF_MERGING if callable(getattr(module, m, None))), None)
        if method is not None:
            found[path] = method
    return found


def _remainder(bn: nn.Module) -> nn.Module | None:
    """What is left of a BatchNorm module once its normalization is folded away, or ``None`` if that is unknown.

    A plain BatchNorm leaves nothing (``nn.Identity``). timm's ``BatchNormAct2d`` normalizes, then applies its
    dropout and activation: those stay. Any other subclass may compute more than it shows, so it is not folded.
    """
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(getattr(bn, "act", None), nn.Module):
        return nn.Sequential(bn.drop, bn.act)
    return None


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def fuse_batchnorm(
    model: nn.Module, example: torch.Tensor, program: torch.export.ExportedProgram | None = None
) -> tuple[nn.Module, FuseReport]:
    """Return a copy of ``model`` with every single-consumer conv→BN / linear→BN pair folded.

    The folded BatchNorm is replaced by ``nn.Identity`` (timm's ``BatchNormAct2d`` by its dropout and activation);
    the conv gains a bias if it had none.
    The input model is not modified; running the stage twice folds nothing the second time.

    Args:
        model: the model (put into eval mode on the copy).
        example: an input the model accepts.
        program: a ``torch.export`` capture of ``model`` in eval mode to find the pairs on (the pipeline
            passes the dynamic-batch capture it also exports as the multi-branch ONNX, so the original is
            captured once); ``None`` captures the model here. Module paths are the same in ``model``, its
            copy and the capture, so the pairs found are the same either way.

    Returns:
        The fused copy and a report of the folds.
    """
    fused = copy.deepcopy(model).eval()
    pairs, skipped = find_foldable_pairs(fused, example, program)
    for conv_path, bn_path in pairs:
        conv, bn = fused.get_submodule(conv_path), fused.get_submodule(bn_path)
        weight, bias = fold_bn(conv.weight, conv.bias, bn)
        conv.weight = nn.Parameter(weight)
        conv.bias = nn.Parameter(bias)
        _replace(fused, bn_path, _remainder(bn))
    return fused, FuseReport(folded=pairs, skipped=skipped)
