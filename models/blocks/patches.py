"""Unfold a feature map into patch-position groups of tokens and fold it back (MobileViT v1 and v2).

``unfold_patches`` turns ``(B, C, H, W)`` into ``(B, C, P, N)``: ``P = ph·pw`` positions inside a patch,
``N = (H/ph)·(W/pw)`` patches. The transformer lets the ``N`` tokens of one position ``p`` interact.

Written for the converters: every intermediate tensor has rank ≤ 5 (Core ML rejects rank-6 reshapes,
which the direct ``(B, C, nh, ph, nw, pw)`` formulation needs), the batch stays the leading dimension
(so a dynamic batch survives ``torch.export``), and every other size is a Python int fixed by the input
size (no data-dependent shapes). ``F.unfold`` / ``F.pixel_unshuffle`` are avoided: they decompose into
rank-6 views or gathers on some export paths.
"""

from __future__ import annotations

import torch


def unfold_patches(x: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, P, N)`` with ``P`` indexed ``i·pw + j`` and ``N`` indexed ``a·nw + b``.

    Args:
        x: the feature map; ``H`` and ``W`` must be multiples of the patch size.
        patch_h: patch height ``ph``.
        patch_w: patch width ``pw``.

    Raises:
        ValueError: the map does not tile into whole patches.
    """
    b, c, h, w = x.shape
    if h % patch_h or w % patch_w:
        raise ValueError(f"a {h}x{w} map does not tile into {patch_h}x{patch_w} patches")
    num_h, num_w = h // patch_h, w // patch_w
    x = x.reshape(b, c, num_h, patch_h, w).transpose(2, 3)  # (B, C, ph, nh, W)
    x = x.reshape(b, c * patch_h, num_h * num_w, patch_w).transpose(2, 3)  # (B, C·ph, pw, N)
    return x.reshape(b, c, patch_h * patch_w, num_h * num_w)


def fold_patches(x: torch.Tensor, patch_h: int, patch_w: int, num_h: int, num_w: int) -> torch.Tensor:
    """Inverse of :func:`unfold_patches`: ``(B, C, P, N)`` → ``(B, C, nh·ph, nw·pw)``.

    Args:
        x: patches ``(B, C, ph·pw, nh·nw)``.
        patch_h: patch height ``ph``.
        patch_w: patch width ``pw``.
        num_h: patches along the height ``nh``.
        num_w: patches along the width ``nw``.
    """
    b, c = x.shape[:2]
    x = x.reshape(b, c * patch_h, patch_w, num_h * num_w).transpose(2, 3)  # (B, C·ph, N, pw)
    x = x.reshape(b, c, patch_h, num_h, num_w * patch_w).transpose(2, 3)  # (B, C, nh, ph, W)
    return x.reshape(b, c, num_h * patch_h, num_w * patch_w)
