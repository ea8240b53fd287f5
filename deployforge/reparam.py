"""Stage 2: merge parallel branches by calling each block's ``reparameterize()``."""

from __future__ import annotations

import copy

from torch import nn

from deployforge.models.blocks import MergeCount


def _reparameterize_tree(module: nn.Module) -> MergeCount:
    # A reparameterizable block owns its subtree (it merges its children itself), so stop there.
    if callable(getattr(module, "reparameterize", None)):
        return module.reparameterize()
    count = MergeCount()
    for child in list(module.children()):
        count = count + _reparameterize_tree(child)
    return count


def reparameterize(model: nn.Module) -> tuple[nn.Module, MergeCount]:
    """Return a copy of ``model`` with every reparameterizable block in its inference form.

    Args:
        model: a model, multi-branch or already (partly) reparameterized.

    Returns:
        The reparameterized copy (eval mode) and what was merged; idempotent.
    """
    merged = copy.deepcopy(model).eval()
    return merged, _reparameterize_tree(merged)
