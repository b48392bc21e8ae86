"""Optimizer (SGD with momentum or AdamW, no weight decay on norms and biases) and its schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of trainable parameters: weights with ``weight_decay``; biases and norm scales (1-D) without."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _sgd(groups: list[dict], lr: float, momentum: float, nesterov: bool, betas: tuple[float, float]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def _adamw(groups: list[dict], lr: float, momentum: float, nesterov: bool,
           betas: tuple[float, float]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adamw": _adamw}
"""The values of ``optim.name``: name -> builder from parameter groups, ``lr``, ``momentum``, ``nesterov``
and ``betas`` (SGD ignores ``betas``, AdamW ``momentum`` and ``nesterov``)."""


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Optimizer ``name`` (one of :data:`OPTIMIZERS`) over :func:`param_groups` of ``model``."""
    return OPTIMIZERS[name](param_groups(model, weight_decay), lr, momentum, nesterov, betas)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, start_factor: float, min_factor: float) -> float:
    """Multiplier of the base lr at optimizer step ``step``: linear from ``start_factor`` to 1 over
    ``warmup_steps``, then cosine from 1 down to ``min_factor`` at ``total_steps``."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, lr: float, steps_per_epoch: int, epochs: int,
                    warmup_epochs: float, warmup_start_factor: float, min_lr: float) -> LambdaLR:
    """Per-step cosine schedule of base ``lr`` with linear warm-up of ``warmup_epochs`` epochs from
    ``warmup_start_factor x lr``, ending at ``min_lr`` after ``epochs``."""
    total = steps_per_epoch * epochs
    warmup = round(warmup_epochs * steps_per_epoch)
    min_factor = min_lr / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        return warmup_cosine(step, total, warmup, warmup_start_factor, min_factor)

    return LambdaLR(optimizer, factor)
