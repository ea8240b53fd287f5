"""The contract every reparameterizable block meets."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn


@dataclass
class MergeCount:
    """What one ``reparameterize()`` call changed.

    Attributes:
        branches: parallel branches merged into a single conv (identity/BN branches included).
        layer_scales: layer scales folded into the projection that feeds them.
        norms: BatchNorms folded forward into the linear layer that reads them.
        tables: learned tables gathered once into the constant the inference form reads (EfficientFormer's
            attention bias, indexed by token offset).
        foreign: modules from outside these blocks put in their inference form through timm's conventions (their
            own ``reparameterize()``, ``fuse()`` or ``switch_to_deploy()``, which report no counts of their own).
    """

    branches: int = 0
    layer_scales: int = 0
    norms: int = 0
    tables: int = 0
    foreign: int = 0

    def __add__(self, other: MergeCount) -> MergeCount:
        return MergeCount(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class Reparameterizable(nn.Module):
    """A block with a multi-branch train-time form and a single-path inference form.

    ``reparameterize()`` rewrites the block (and any reparameterizable children) in place into its
    inference form, returns what it merged, and is idempotent: a second call returns ``MergeCount()``.
    Compare the two forms in eval mode only: BatchNorm folds use running statistics.
    """

    def reparameterize(self) -> MergeCount:  # pragma: no cover - interface
        """Merge this block's branches in place; see the class docstring."""
        raise NotImplementedError
