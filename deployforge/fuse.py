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

from deployforge.models.blocks import fold_bn

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

    pairs, skipped = [], {}
    for node in nodes:
        if node.target not in _BATCH_NORMS:
            continue
        bn_path = buffer_owner.get(str(node.args[3]))
        if bn_path is None:
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
        elif producer.target is torch.ops.aten.linear.default and producer.meta["val"].dim() != 2:
            skipped[bn_path] = "linear output is not (batch, features)"
        else:
            pairs.append((conv_path, bn_path))
    return pairs, skipped


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def fuse_batchnorm(
    model: nn.Module, example: torch.Tensor, program: torch.export.ExportedProgram | None = None
) -> tuple[nn.Module, FuseReport]:
    """Return a copy of ``model`` with every single-consumer conv→BN / linear→BN pair folded.

    The folded BatchNorm is replaced by ``nn.Identity``; the conv gains a bias if it had none.
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
        _replace(fused, bn_path, nn.Identity())
    return fused, FuseReport(folded=pairs, skipped=skipped)
