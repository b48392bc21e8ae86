"""Accuracy metrics and a confusion-matrix image drawn without matplotlib."""
from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of rows of ``scores (N, K)`` whose label ``(N,)`` is among the ``k`` highest, for each ``k``.

    ``k`` larger than ``K`` counts every row.
    """
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 counts, row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """``(K,)`` float64 recall of each class (NaN for classes with no samples)."""
    totals = confusion.sum(dim=1).double()
    return confusion.diagonal().double() / totals


def confusion_image(confusion: torch.Tensor, cell: int = 0) -> torch.Tensor:
    """A ``(3, H, W)`` float image in [0, 1] of the row-normalised matrix: white (0) to dark blue (1).

    ``cell`` pixels per entry (default: enough for a ~256-pixel image, at least 1).
    """
    k = confusion.shape[0]
    cell = cell or max(1, 256 // k)
    rows = confusion.double().sum(dim=1, keepdim=True).clamp_min(1)
    value = (confusion.double() / rows).float()
    white, blue = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.03, 0.19, 0.42])
    rgb = white[:, None, None] + (blue - white)[:, None, None] * value[None]
    return rgb.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
