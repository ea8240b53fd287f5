"""Classifier head shared by the families: global average pool, then a linear layer."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """``fc(mean_hw(x))``.

    Args:
        in_chs: channels of the pooled feature map.
        num_classes: outputs.
    """

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))
