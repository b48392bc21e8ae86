"""The pool-kind switch: one place that turns ``pool="soft" | "max" | "avg"`` into modules.

Every pooling layer of every model (stem pooling, global head pooling, pooling inside
blocks such as X3D's squeeze-excitation or SRTG's per-frame squeeze) is built here, so
one ``pool`` argument sets them all.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from softpool3d import SoftPool3d, soft_pool3d
from softpool3d.replace import POOL_KINDS

IntOrTuple = Union[int, Sequence[int]]


def check_pool_kind(pool: str) -> str:
    """Return ``pool`` if it is one of :data:`POOL_KINDS`, else raise ``ValueError`` naming it."""
    if pool not in POOL_KINDS:
        raise ValueError(f"pool must be one of {POOL_KINDS}, got {pool!r}")
    return pool


def make_pool3d(pool: str, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0) -> nn.Module:
    """A windowed pooling module of kind ``pool`` over ``(N, C, T, H, W)``; arguments as ``nn.AvgPool3d``.

    ``avg`` does not count padded positions (``count_include_pad=False``), like ``soft`` and
    ``max``, so the three kinds see the same windows.
    """
    check_pool_kind(pool)
    if pool == "soft":
        return SoftPool3d(kernel_size, stride, padding)
    if pool == "max":
        return nn.MaxPool3d(kernel_size, stride, padding)
    return nn.AvgPool3d(kernel_size, stride, padding, count_include_pad=False)


class GlobalPool3d(nn.Module):
    """Global pooling of kind ``pool`` over ``(N, C, T, H, W)``.

    ``per_frame=False``: pools over T, H and W, giving ``(N, C, 1, 1, 1)``.
    ``per_frame=True``: pools over H and W only, giving ``(N, C, T, 1, 1)``.
    """

    def __init__(self, pool: str, per_frame: bool = False) -> None:
        super().__init__()
        self.pool = check_pool_kind(pool)
        self.per_frame = per_frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"GlobalPool3d expects (N, C, T, H, W), got shape {tuple(x.shape)}")
        dims = (3, 4) if self.per_frame else (2, 3, 4)
        if self.pool == "avg":
            return x.mean(dim=dims, keepdim=True)
        if self.pool == "max":
            return x.amax(dim=dims, keepdim=True)
        kernel = (1, *x.shape[-2:]) if self.per_frame else tuple(x.shape[-3:])
        return soft_pool3d(x, kernel_size=kernel)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}, per_frame={self.per_frame}"
