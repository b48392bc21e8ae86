"""Random erasing of training clips on the training device: one box per clip, through all its frames.

It runs on a batch inside the training step, after normalization, so an erased box holds 0, the
dataset's mean colour. The box follows torchvision's ``RandomErasing``: an area of ``scale`` of
the frame with a log-uniform aspect ratio in ``ratio``, up to 10 tries to fit it. Every draw comes
from the ``numpy.random.Generator`` given to the call (one per step, rank and micro-batch:
:func:`softpool3d.engine.training.switches.step_generator`); only the boxes cross to the device.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig

from softpool3d.engine.training.switches.base import SwitchContext, TrainingSwitch


def erasing_box(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = (0.02, 1 / 3),
                ratio: tuple[float, float] = (0.3, 3.3)) -> Optional[tuple[int, int, int, int]]:
    """``(top, left, box_height, box_width)`` of one box, or None when 10 tries do not fit one."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        box_h, box_w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if box_h < height and box_w < width:
            return int(rng.integers(height - box_h + 1)), int(rng.integers(width - box_w + 1)), box_h, box_w
    return None


def random_erase(clips: torch.Tensor, probability: float, rng: np.random.Generator) -> torch.Tensor:
    """Clips ``(N, C, T, H, W)`` -> the same with, for each clip with ``probability``, one
    :func:`erasing_box` set to 0 in every channel and frame. Returns ``clips`` itself when nothing
    is erased, else a new tensor."""
    count, height, width = clips.shape[0], clips.shape[-2], clips.shape[-1]
    boxes = []
    for index in range(count):
        if rng.random() < probability:
            box = erasing_box(height, width, rng)
            if box is not None:
                boxes.append((index, *box))
    if not boxes:
        return clips
    index, top, left, box_h, box_w = torch.tensor(boxes, dtype=torch.long).to(clips.device, non_blocking=True).unbind(1)
    rows = torch.arange(height, device=clips.device)
    cols = torch.arange(width, device=clips.device)
    inside = (((rows >= top[:, None]) & (rows < (top + box_h)[:, None]))[:, :, None]
              & ((cols >= left[:, None]) & (cols < (left + box_w)[:, None]))[:, None, :])  # (B, H, W)
    mask = torch.zeros(count, height, width, dtype=torch.bool, device=clips.device).index_put((index,), inside)
    return clips.masked_fill(mask[:, None, None], 0)


class RandomErasing(TrainingSwitch):
    """``data.random_erasing``: :func:`random_erase` on each training micro-batch with this probability a clip."""

    name = "random_erasing"

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def augment(self, clips: torch.Tensor, targets: torch.Tensor,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return random_erase(clips, self.probability, rng), targets


def build(cfg: DictConfig, context: SwitchContext) -> Optional[RandomErasing]:
    """On when ``data.random_erasing`` > 0."""
    return RandomErasing(cfg.data.random_erasing) if cfg.data.random_erasing > 0 else None
