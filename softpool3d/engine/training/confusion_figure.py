"""A readable confusion-matrix picture for TensorBoard, drawn with PIL (no matplotlib).

Rows are true classes, columns predicted ones; each cell is shaded by its row-normalised share
(white 0 to dark blue 1, with a colour bar) and shows its count. Up to :data:`MAX_LABELLED`
classes are drawn whole with their names as tick labels; for more, the sub-matrix of the most
confused classes (largest off-diagonal counts, as true or as predicted class) is drawn and the
title says so.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MAX_LABELLED = 30
"""The most classes drawn with names; a larger matrix is shown as its most-confused classes' sub-matrix."""

_WHITE = np.array([255.0, 255.0, 255.0])
_BLUE = np.array([8.0, 48.0, 107.0])


def most_confused(confusion: torch.Tensor, count: int) -> list[int]:
    """The ``count`` classes with the most off-diagonal counts (as true plus as predicted class), in class order."""
    off = confusion.double().clone()
    off.fill_diagonal_(0)
    score = off.sum(dim=0) + off.sum(dim=1)
    order = sorted(range(len(score)), key=lambda k: (-float(score[k]), k))[:count]
    return sorted(order)


def _shade(value: float) -> tuple[int, int, int]:
    return tuple(int(round(c)) for c in _WHITE + (_BLUE - _WHITE) * value)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def confusion_figure(confusion: torch.Tensor, classes: Sequence[str], max_labelled: int = MAX_LABELLED) -> torch.Tensor:
    """``confusion (K, K)`` counts (row = true class) -> a ``(3, H, W)`` float image in [0, 1]:
    labelled cells with counts, a colour bar of the row-normalised share and a title."""
    num_classes = confusion.shape[0]
    shown = list(range(num_classes)) if num_classes <= max_labelled else most_confused(confusion, max_labelled)
    matrix = confusion[shown][:, shown].long().numpy()
    rows = confusion.double().sum(dim=1)[shown].clamp_min(1).numpy()
    share = matrix / rows[:, None]
    names = [str(classes[k]) for k in shown]
    n = len(shown)
    cell = max(18, min(48, 720 // n))
    font = ImageFont.load_default(size=max(9, min(14, cell // 2)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(_text_size(probe, name, font)[0] for name in names) + 8
    line = _text_size(probe, "Ag", font)[1] + 6
    title = (f"confusion matrix, {num_classes} classes (rows: true, columns: predicted)" if len(shown) == num_classes
             else f"the {n} most confused of {num_classes} classes (rows: true, columns: predicted)")
    bar_width, bar_gap, bar_labels = 14, 16, _text_size(probe, "1.0", font)[0] + 6
    left, top = label_width, 2 * line + label_width
    width = max(left + n * cell + bar_gap + bar_width + bar_labels + 4, _text_size(probe, title, font)[0] + 8)
    height = top + n * cell + line
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black", font=font)
    for i in range(n):
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            value = float(share[i, j])
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=_shade(value), outline=(220, 220, 220))
            if matrix[i, j]:
                text = str(int(matrix[i, j]))
                w, h = _text_size(draw, text, font)
                if w <= cell - 2:
                    draw.text((x + (cell - w) / 2, y + (cell - h) / 2 - 1), text, font=font,
                              fill="white" if value > 0.5 else "black")
    for i, name in enumerate(names):
        w, h = _text_size(draw, name, font)
        draw.text((left - w - 4, top + i * cell + (cell - h) / 2 - 1), name, fill="black", font=font)
        column = Image.new("RGB", (label_width, cell), "white")
        ImageDraw.Draw(column).text((4, (cell - h) / 2 - 1), name, fill="black", font=font)
        image.paste(column.rotate(90, expand=True), (left + i * cell, top - label_width))
    bar_left = left + n * cell + bar_gap
    span = n * cell
    for y in range(span):
        draw.line((bar_left, top + y, bar_left + bar_width, top + y), fill=_shade(1 - y / max(span - 1, 1)))
    draw.rectangle((bar_left, top, bar_left + bar_width, top + span - 1), outline="black")
    for value in (0.0, 0.5, 1.0):
        y = top + (1 - value) * (span - 1)
        draw.text((bar_left + bar_width + 3, y - line / 2 + 2), f"{value:.1f}", fill="black", font=font)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
