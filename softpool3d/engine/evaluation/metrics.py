"""Accuracy metrics: top-k hits, the confusion matrix, per-class accuracy and confusions."""
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


def per_class_rows(confusion: torch.Tensor, classes: list[str]) -> list[dict]:
    """One row per class of ``confusion (K, K)`` (row = true class): ``class``, ``accuracy`` (recall, None
    without samples), ``count`` (its samples), ``most_confused_with`` (the class most of its samples were
    wrongly predicted as, None if none was) and ``confused_count`` (how many)."""
    rows = []
    for k, name in enumerate(classes):
        counts = confusion[k].long().clone()
        total, correct = int(counts.sum()), int(counts[k])
        counts[k] = -1
        other = int(counts.argmax())
        rows.append({"class": name, "accuracy": correct / total if total else None, "count": total,
                     "most_confused_with": classes[other] if int(counts[other]) > 0 else None,
                     "confused_count": max(int(counts[other]), 0)})
    return rows


def worst_classes(rows: list[dict], count: int = 5) -> list[dict]:
    """The ``count`` rows of :func:`per_class_rows` with the lowest accuracy (classes with samples only)."""
    return sorted((row for row in rows if row["count"]), key=lambda row: (row["accuracy"], row["class"]))[:count]
