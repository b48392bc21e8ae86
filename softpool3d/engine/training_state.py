"""The training state a checkpoint holds, and which of its weights a model is.

The layout is defined here once: :func:`training_checkpoint` assembles it, :func:`restore_training`
and :func:`load_model_state` read it back. A checkpoint holds ``model`` (state dict, no ``module.``
prefix), ``optimizer``, ``scheduler``, ``scaler`` (or None), ``epoch`` (the epoch in progress), ``step`` (optimizer steps done),
``step_in_epoch``, ``config`` (plain dict), ``classes``, ``rng`` (one entry per rank: python,
numpy, torch and the rank's own CUDA device's states), ``best_top1``, ``sampler_epoch``, ``skipped_steps`` and
``consecutive_skips`` (non-finite steps skipped), ``ema`` (the EMA of the weights and buffers, a
state dict like ``model``'s, when ``train.ema_decay > 0``; else None) with ``ema_updates``, and
the file format's ``meta`` (:mod:`softpool3d.engine.checkpoint`).

Which weights a checkpoint's model is: :func:`model_weights`. With ``weights="auto"`` (the test,
export, ``model.pretrained``) that is ``ema`` when the run kept one, else ``model``; resuming
training restores both.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from softpool3d.engine.checkpoint import CheckpointError

if TYPE_CHECKING:
    from softpool3d.engine.ema import ModelEma

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and, with CUDA, its current device's) RNG states, as
    types that ``torch.load(weights_only=True)`` accepts (numpy's key array becomes a tensor).

    ``cuda`` is a list holding the one state of the device this rank computes on, not one per
    visible device: a job resumed with another GPU visibility (8 per process becoming 1 per
    process) restores it all the same.
    """
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [torch.cuda.get_rng_state(torch.cuda.current_device())]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`. The CUDA state goes to this process's current
    device; a checkpoint of an older format, holding one state per device its rank could see,
    gives the current device the entry of the same index (the first when there are fewer)."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        device = torch.cuda.current_device()
        torch.cuda.set_rng_state(cuda[device if len(cuda) > 1 and device < len(cuda) else 0], device)


@dataclass
class Progress:
    """Where a training run stands, as its checkpoint records it."""

    epoch: int = 0  # the epoch in progress
    step: int = 0  # optimizer steps done
    step_in_epoch: int = 0
    best_top1: float = -1.0
    skipped_steps: int = 0  # non-finite steps skipped (train.nonfinite=skip), and how many in a row
    consecutive_skips: int = 0


def training_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                        progress: Progress, sampler_epoch: int, config: dict, classes: list[str],
                        rng: list[dict[str, Any]], ema: Optional[ModelEma] = None) -> dict[str, Any]:
    """The checkpoint of a training run (see the module docstring), ready for :func:`save_checkpoint`;
    ``rng`` holds one :func:`rng_state` per rank, ``config`` is the plain-dict config, ``ema`` the
    run's EMA (None when off)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": progress.epoch,
        "step": progress.step,
        "step_in_epoch": progress.step_in_epoch,
        "sampler_epoch": sampler_epoch,
        "best_top1": progress.best_top1,
        "config": config,
        "classes": classes,
        "rng": rng,
        "skipped_steps": progress.skipped_steps,
        "consecutive_skips": progress.consecutive_skips,
        "ema": ema.state_dict() if ema is not None else None,
        "ema_updates": ema.updates if ema is not None else 0,
    }


def restore_training(checkpoint: Mapping[str, Any], path: Union[str, os.PathLike], model: nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, rank: int = 0,
                     world_size: int = 1, ema: Optional[ModelEma] = None) -> Progress:
    """Load a :func:`training_checkpoint` (read from ``path``) into the training objects, ``ema``
    (if the run keeps one) and this process's RNGs (rank ``rank``'s states, when the checkpoint has
    one per process of a ``world_size``-process run; otherwise a warning); returns its :class:`Progress`."""
    load_model_state(model, checkpoint, path, weights="model")
    if ema is not None and checkpoint.get("ema") is not None:
        ema.load_state_dict(checkpoint["ema"], checkpoint["ema_updates"])
    elif ema is not None:
        logger.warning("checkpoint %s holds no EMA (its run had train.ema_decay=0): the EMA starts from the "
                       "weights at the next step", path)
    states = checkpoint.get("rng") or []
    if len(states) == world_size:
        set_rng_state(states[rank])
    else:
        logger.warning("checkpoint %s has RNG states of %d processes, this run has %d: RNG not restored",
                       path, len(states), world_size)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    return Progress(checkpoint["epoch"], checkpoint["step"], checkpoint.get("step_in_epoch", 0),
                    checkpoint.get("best_top1", -1.0), checkpoint.get("skipped_steps", 0),
                    checkpoint.get("consecutive_skips", 0))


WEIGHTS = ("auto", "model", "ema")
"""Which weights of a checkpoint :func:`model_weights` gives: ``auto`` (``ema`` if the run kept an EMA,
else ``model``), ``model`` (the raw weights) or ``ema``."""


def model_weights(checkpoint: Mapping[str, Any], weights: str = "auto",
                  path: Union[str, os.PathLike] = "checkpoint") -> Mapping[str, torch.Tensor]:
    """The state dict of ``checkpoint`` that ``weights`` (one of :data:`WEIGHTS`) names; asking for
    ``ema`` of a run without one raises :class:`CheckpointError` naming ``path``."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    ema = checkpoint.get("ema")
    if weights == "ema" and ema is None:
        raise CheckpointError(f"checkpoint {path} holds no EMA weights (its run had train.ema_decay=0)")
    return ema if weights == "ema" or (weights == "auto" and ema is not None) else checkpoint["model"]


def load_model_state(model: nn.Module, checkpoint: Mapping[str, Any], path: Union[str, os.PathLike],
                     weights: str = "auto") -> None:
    """Load :func:`model_weights` ``(checkpoint, weights)`` into ``model``; a checkpoint of another
    model or width raises :class:`CheckpointError` naming the file and the model its stored config
    describes."""
    try:
        model.load_state_dict(model_weights(checkpoint, weights, path))
    except RuntimeError as error:
        stored = (checkpoint.get("config") or {}).get("model") or {}
        held = f"model.name={stored.get('name')} model.width={stored.get('width')} model.pool={stored.get('pool')}"
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise CheckpointError(f"checkpoint {path} holds {held}, which does not fit this run's model "
                              f"({first}); drop the model.* overrides or pass the checkpoint's values") from None
