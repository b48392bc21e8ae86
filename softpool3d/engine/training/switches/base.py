"""The interface of a training switch: a small object with optional hooks and, if it keeps any, its
own state, saved in the checkpoint under its own name.

The training loop calls every switch of the run at each hook, in the order of
:data:`softpool3d.engine.training.switches.SWITCHES`; a hook a switch does not override does nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from softpool3d.datasets import ClipDataset
from softpool3d.engine.inputs import ClipNormalizer
from softpool3d.engine.processes.distributed import DistInfo

NamedModels = list[tuple[str, nn.Module]]
"""The models an evaluation runs, as ``(name, model)``: the first is the one that counts (its validation
picks ``best.pt``; the test; export)."""


@dataclass(frozen=True)
class SwitchContext:
    """What a switch may be built with: the run's model, its training set, this rank, the class count,
    the normalizer and the resolved precision (``"bf16"``, ``"fp16"`` or ``"none"``)."""

    model: nn.Module
    train_set: ClipDataset
    dist_info: DistInfo
    num_classes: int
    normalizer: ClipNormalizer
    amp: str
    seed: int
    batch_size: int
    num_workers: int


class TrainingSwitch:
    """A training feature, off unless its config key turns it on. Override only the hooks it needs.

    ``name`` is its key in the checkpoint's ``switches`` (and in the registry). A switch whose
    :meth:`state_dict` holds ``"weights"`` (a state dict like the model's) with ``gives_weights``
    set offers those weights as the checkpoint's evaluation weights (the test, export and
    ``model.pretrained`` read them).
    """

    name: str = ""
    gives_weights: bool = False

    def augment(self, clips: torch.Tensor, targets: torch.Tensor,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training micro-batch on the device, clips ``(N, C, T, H, W)`` and targets ``(N,)`` or
        ``(N, K)``, drawing only from ``rng`` (the step's: :func:`~softpool3d.engine.training.switches.step_generator`)."""
        return clips, targets

    def criterion(self, loss: nn.Module) -> nn.Module:
        """The loss of the run, given the loss so far: ``loss(logits (N, K), targets)``."""
        return loss

    def after_step(self, model: nn.Module, updated: bool) -> None:
        """After an optimizer step (``updated``: False when the step was skipped as non-finite)."""

    def eval_models(self, models: NamedModels, epoch: int, step: int) -> NamedModels:
        """The models to evaluate after training epoch ``epoch`` (0-based), at optimizer step ``step``,
        given those of the switches before; collective when it computes across ranks."""
        return models

    def state_dict(self) -> Optional[dict[str, Any]]:
        """What the checkpoint keeps of this switch under ``switches[name]``; None: nothing."""
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (resuming)."""

    def missing_state(self, path: Union[str, os.PathLike]) -> None:
        """Resuming from checkpoint ``path``, which holds no state of this switch (its run had it off)."""
