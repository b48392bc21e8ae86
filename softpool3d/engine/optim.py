"""Optimizer (SGD with momentum or AdamW, no weight decay on norms and biases) and its schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch
from omegaconf import DictConfig
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


def _sgd(groups: list[dict], cfg: DictConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _adamw(groups: list[dict], cfg: DictConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


OPTIMIZERS: dict[str, Callable[[list[dict], DictConfig], torch.optim.Optimizer]] = {"sgd": _sgd, "adamw": _adamw}
"""The values of ``optim.name``: name -> builder from parameter groups and the ``optim`` section."""


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """``cfg`` is the ``optim`` section: ``name`` (one of :data:`OPTIMIZERS`), ``lr``, ``momentum``,
    ``nesterov``, ``betas``, ``weight_decay``."""
    return OPTIMIZERS[cfg.name](param_groups(model, cfg.weight_decay), cfg)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, start_factor: float, min_factor: float) -> float:
    """Multiplier of the base lr at optimizer step ``step``: linear from ``start_factor`` to 1 over
    ``warmup_steps``, then cosine from 1 down to ``min_factor`` at ``total_steps``."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """Per-step cosine schedule with linear warm-up of ``cfg.warmup_epochs`` epochs, ending at ``cfg.min_lr``."""
    total = steps_per_epoch * epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    min_factor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def factor(step: int) -> float:
        return warmup_cosine(step, total, warmup, cfg.warmup_start_factor, min_factor)

    return LambdaLR(optimizer, factor)
