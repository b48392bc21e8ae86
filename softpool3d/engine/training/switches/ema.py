"""An exponential moving average (EMA) of a model's weights and BatchNorm buffers (``train.ema_decay``).

After each optimizer step that updated the weights, ``w_ema <- decay * w_ema + (1 - decay) * w``
for every parameter and floating-point buffer (the first update copies the model); integer
buffers (BatchNorm's ``num_batches_tracked``) are copied. ``torch.optim.swa_utils.AveragedModel``
with ``get_ema_multi_avg_fn`` does the averaging. A step that :mod:`softpool3d.engine.training.nonfinite`
skips leaves the EMA alone, as it leaves the weights and buffers: a skipped step is as if it had
not been taken. The EMA averages over about ``1 / (1 - decay)`` steps, so the decay should fit
the run's number of steps.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Union

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from softpool3d.engine.training.switches.base import NamedModels, SwitchContext, TrainingSwitch

logger = logging.getLogger(__name__)


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


class EmaSwitch(TrainingSwitch):
    """``train.ema_decay``: the :class:`ModelEma` of the run's model, updated after each step that
    updated the weights; evaluated first (``"ema"``, the weights that count), then the raw weights
    (``"raw"``); saved under ``switches["ema"]`` as ``{"weights", "updates"}``."""

    name = "ema"
    gives_weights = True

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.ema = ModelEma(model, decay)

    def after_step(self, model: nn.Module, updated: bool) -> None:
        if updated:
            self.ema.update(model)

    def eval_models(self, models: NamedModels, epoch: int, step: int) -> NamedModels:
        return [("ema", self.ema.module), *(("raw" if name == "model" else name, model) for name, model in models)]

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.ema.state_dict(), "updates": self.ema.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema.load_state_dict(state["weights"], state["updates"])

    def missing_state(self, path: Union[str, os.PathLike]) -> None:
        logger.warning("checkpoint %s holds no EMA (its run had train.ema_decay=0): the EMA starts from the "
                       "weights at the next step", path)


def build(cfg: DictConfig, context: SwitchContext) -> Optional[EmaSwitch]:
    """On when ``train.ema_decay`` > 0."""
    return EmaSwitch(context.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
