"""Multi-head attention over a fixed token grid with a learned bias per head and relative offset (LeViT style).

The bias added to the attention logits of tokens ``i`` and ``j`` is read from a small learned table, one entry
per head and per absolute offset ``(|Δrow|, |Δcol|)`` between the two positions, through a constant index
table. The table fixes the token grid, so the block only accepts ``resolution²`` tokens. At deployment the
gather is done once: :meth:`LearnedBiasAttention.reparameterize` stores the dense ``(heads, N, N)`` bias as a
buffer, so the exported graph adds a constant instead of gathering from a table with a constant index.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import MergeCount, Reparameterizable


def relative_offset_index(resolution: int) -> torch.Tensor:
    """Index of the ``(|Δrow|, |Δcol|)`` entry for every pair of positions on a ``resolution²`` grid.

    Positions are numbered row-major; the entry of offset ``(r, c)`` is ``r · resolution + c``.

    Args:
        resolution: side of the square token grid.

    Returns:
        ``(N, N)`` int64 indices into a table of ``N = resolution²`` entries.
    """
    rows, cols = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    positions = torch.stack((rows.flatten(), cols.flatten()))  # (2, N)
    offsets = (positions[:, :, None] - positions[:, None, :]).abs()  # (2, N, N)
    return offsets[0] * resolution + offsets[1]


class LearnedBiasAttention(Reparameterizable):
    """``proj(softmax(q·kᵀ·s + B)·v)`` on tokens ``(B, N, C)`` of a ``resolution × resolution`` grid.

    One ``qkv`` linear layer gives, per head, a query and a key of ``key_dim`` channels and a value of
    ``attn_ratio · key_dim`` channels, laid out head by head (``[q₀ k₀ v₀ q₁ k₁ v₁ …]``). ``B[h, i, j]`` is
    ``attention_biases[h, attention_bias_idxs[i, j]]`` (:func:`relative_offset_index`).

    The table is drawn from N(0, 1) rather than zero (a trained model has learned it): with a zero table a
    wrong index table or a lost bias would leave random-weight parity checks unchanged.

    Args:
        dim: channels of the tokens.
        key_dim: query/key channels per head.
        num_heads: heads.
        attn_ratio: value channels per head as a multiple of ``key_dim``.
        resolution: side of the token grid the bias table covers.
    """

    def __init__(
        self, dim: int, key_dim: int = 32, num_heads: int = 8, attn_ratio: float = 4.0, resolution: int = 7
    ) -> None:
        super().__init__()
        self.key_dim, self.num_heads = key_dim, num_heads
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        self.resolution = resolution
        self.tokens = resolution * resolution
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, dim)
        self.attention_biases = nn.Parameter(torch.randn(num_heads, self.tokens))
        self.register_buffer("attention_bias_idxs", relative_offset_index(resolution))

    @property
    def merged(self) -> bool:
        """Whether the bias has been gathered into the dense ``attention_bias`` buffer."""
        return "attention_bias" in self._buffers

    def bias(self) -> torch.Tensor:
        """The ``(heads, N, N)`` bias added to the attention logits."""
        if self.merged:
            return self.attention_bias
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if n != self.tokens:
            raise ValueError(
                f"the attention bias table covers a {self.resolution}x{self.resolution} token grid "
                f"({self.tokens} tokens); got {n} tokens"
            )
        # -1 for the batch: the exported graph then needs no Shape/Gather to read it
        qkv = self.qkv(x).reshape(-1, n, self.num_heads, 2 * self.key_dim + self.val_dim).transpose(1, 2)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=-1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale + self.bias(), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, n, self.num_heads * self.val_dim))

    def reparameterize(self) -> MergeCount:
        """Gather the bias once into a dense buffer; drop the table and its index.

        Counted as one gathered table; the dense bias is a buffer, not a parameter, so the reparameterized
        model's parameter count does not grow by ``heads · N²``.
        """
        if self.merged:
            return MergeCount()
        dense = self.attention_biases.detach()[:, self.attention_bias_idxs].clone()
        del self.attention_biases
        del self.attention_bias_idxs
        self.register_buffer("attention_bias", dense)
        return MergeCount(tables=1)
