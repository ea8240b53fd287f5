"""Stage 2: merge parallel branches by calling each block's ``reparameterize()``."""

from __future__ import annotations

import copy

import torch
from torch import nn

from deployforge.models.blocks import MergeCount


def _reparameterize_tree(module: nn.Module) -> MergeCount:
    """Put ``module`` and everything under it in inference form; return what was merged."""
    if callable(getattr(module, "reparameterize", None)):
        result = module.reparameterize()
        # One of our blocks owns its subtree (it merges its children itself and counts what it did): stop there.
        if isinstance(result, MergeCount):
            return result
        return MergeCount(foreign=1) + _reparameterize_children(module)
    if callable(getattr(module, "switch_to_deploy", None)):
        module.switch_to_deploy()
        return MergeCount(foreign=1) + _reparameterize_children(module)
    return _reparameterize_children(module)


def _reparameterize_children(module: nn.Module) -> MergeCount:
    """Each child in inference form. A child with timm's ``fuse()`` is replaced by the module it returns."""
    count = MergeCount()
    for name, child in list(module.named_children()):
        fuse = getattr(child, "fuse", None)
        if callable(fuse) and not callable(getattr(child, "reparameterize", None)):
            fused = fuse()
            if isinstance(fused, nn.Module) and fused is not child:
                setattr(module, name, fused)
                child = fused
            count = count + MergeCount(foreign=1)
        count = count + _reparameterize_tree(child)
    return count


def reparameterize(model: nn.Module) -> tuple[nn.Module, MergeCount]:
    """Return a copy of ``model`` with every reparameterizable block in its inference form.

    deployforge's own blocks merge through their ``reparameterize()``, which counts what it merged. Any other
    module is merged as timm merges it: its own ``reparameterize()`` or ``switch_to_deploy()`` is called, and a
    ``fuse()`` method replaces the module by the one it returns; its children are visited after it.

    Args:
        model: a model, multi-branch or already (partly) reparameterized.

    Returns:
        The reparameterized copy (eval mode) and what was merged; idempotent.
    """
    merged = copy.deepcopy(model).eval()
    return merged, _reparameterize_tree(merged)


def weightless_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are meta tensors: shapes and dtypes, no storage.

    Nothing is copied but the module tree (``model`` is not modified). It runs on meta inputs, computing
    shapes only: what counting parameters or MACs needs.
    """
    memo: dict[int, object] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def reparameterize_structure(model: nn.Module) -> nn.Module:
    """The architecture :func:`reparameterize` makes of ``model``, without its weights (on the meta device).

    The merges run on a :func:`weightless_copy` with the meta device as default, so nothing is copied or
    computed: what it is for is counting the reparameterized model's parameters without a second copy and
    merge of the whole model. The merges are structural (a block's inference form never depends on its
    weight values), so shapes and counts equal those of ``reparameterize(model)[0]``; tests/test_sizes.py
    checks it for every registered model.

    Args:
        model: a model, multi-branch or already (partly) reparameterized (not modified).

    Returns:
        The reparameterized meta-device copy (eval mode); it cannot run on data.
    """
    skeleton = weightless_copy(model).eval()
    with torch.device("meta"):
        _reparameterize_tree(skeleton)
    return skeleton
