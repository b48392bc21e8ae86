"""An exponential moving average (EMA) of a model's weights and BatchNorm buffers (``train.ema_decay``).

After each optimizer step that updated the weights, ``w_ema <- decay * w_ema + (1 - decay) * w``
for every parameter and floating-point buffer (the first update copies the model); integer
buffers (BatchNorm's ``num_batches_tracked``) are copied. ``torch.optim.swa_utils.AveragedModel``
with ``get_ema_multi_avg_fn`` does the averaging. A step that :mod:`softpool3d.engine.nonfinite`
skips leaves the EMA alone, as it leaves the weights and buffers: a skipped step is as if it had
not been taken. The EMA averages over about ``1 / (1 - decay)`` steps, so the decay should fit
the run's number of steps.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ModelEma:
    """The EMA of ``model`` with ``decay`` in ``(0, 1)``; ``module`` is the averaged copy (same
    class, device and state-dict keys as ``model``)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        """How many optimizer steps the EMA has followed."""
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights and buffers into the average."""
        self.averaged.update_parameters(model)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            if not mine.is_floating_point():
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers, as a state dict of the model."""
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restore :meth:`state_dict` and :attr:`updates` (from a checkpoint)."""
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(updates)
