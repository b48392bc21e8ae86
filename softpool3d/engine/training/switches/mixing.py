"""Mixup and CutMix of a training batch, and the soft-target cross-entropy that mixed targets need.

A mixed batch pairs clip ``i`` with clip ``N - 1 - i`` (the batch reversed, as timm does): mixup
blends whole clips, ``lam * x_i + (1 - lam) * x_(N-1-i)``; CutMix pastes one box of the partner
into the clip, the same box through all frames, and sets ``lam`` to the share of the frame left
uncovered. Targets are blended with the same ``lam``. ``lam`` is drawn from ``Beta(alpha, alpha)``.
Every draw comes from the ``numpy.random.Generator`` given to the call (one per step, rank and
micro-batch: :func:`softpool3d.engine.training.switches.step_generator`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from softpool3d.engine.training.switches.base import SwitchContext, TrainingSwitch


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of ``-sum_k t_k log softmax(logits)_k`` with ``t = (1 - eps) targets + eps / K``.

    ``logits`` ``(N, K)``; ``targets`` either class indices ``(N,)`` (then this is
    ``F.cross_entropy(..., label_smoothing=eps)``) or probabilities ``(N, K)`` (mixed targets).
    Smoothing a mixed target equals mixing smoothed one-hot targets, since both are affine.
    """
    if not targets.is_floating_point():
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    smoothed = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[1]
    return -(smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()


class SoftTargetCrossEntropy(nn.Module):
    """:func:`soft_target_cross_entropy` as a loss module: ``loss(logits (N, K), targets (N,) or (N, K))``."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(logits, targets, self.label_smoothing)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box ``(top, bottom, left, right)`` of about ``1 - lam`` of the frame, centred at a uniform
    random pixel and clipped to the frame (timm's ``rand_bbox``)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


@dataclass
class Mixer:
    """Mixup (``mixup_alpha > 0``) and/or CutMix (``cutmix_alpha > 0``; with both, one of them per
    batch, evenly), applied to a batch with probability ``prob``."""

    mixup_alpha: float
    cutmix_alpha: float
    prob: float
    num_classes: int

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``(N, C, T, H, W)`` and labels ``(N,)`` -> mixed clips and targets ``(N, K)`` float.

        A batch left unmixed (probability ``1 - prob``) gets one-hot targets.
        """
        targets = F.one_hot(labels, self.num_classes).to(clips.dtype if clips.is_floating_point() else torch.float32)
        if rng.random() >= self.prob:
            return clips, targets
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < 0.5)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        partners = clips.flip(0)
        if cutmix:
            height, width = clips.shape[-2:]
            top, bottom, left, right = cutmix_box(height, width, lam, rng)
            clips = clips.clone()
            clips[..., top:bottom, left:right] = partners[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        else:
            clips = clips * lam + partners * (1.0 - lam)
        return clips, targets * lam + targets.flip(0) * (1.0 - lam)


class Mixing(TrainingSwitch):
    """``train.mixup_alpha``, ``train.cutmix_alpha`` and ``train.mix_prob``: each training micro-batch
    goes through :class:`Mixer`; the run's loss, :class:`SoftTargetCrossEntropy`, takes the mixed targets."""

    name = "mixing"

    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer

    def augment(self, clips: torch.Tensor, targets: torch.Tensor,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mixer(clips, targets, rng)


def build(cfg: DictConfig, context: SwitchContext) -> Optional[Mixing]:
    """On when ``train.mixup_alpha`` or ``train.cutmix_alpha`` > 0."""
    mixer = Mixer(cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.mix_prob, context.num_classes)
    return Mixing(mixer) if mixer.enabled else None
