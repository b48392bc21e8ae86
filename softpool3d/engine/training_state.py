"""The training state a checkpoint holds, and which of its weights a model is.

The layout is defined here once: :func:`training_checkpoint` assembles it, :func:`restore_training`
and :func:`load_model_state` read it back. A checkpoint holds ``model`` (state dict, no ``module.``
prefix), ``optimizer``, ``scheduler``, ``scaler`` (or None), ``epoch`` (the epoch in progress), ``step`` (optimizer steps done),
``step_in_epoch``, ``config`` (plain dict), ``classes``, ``rng`` (one entry per rank: python,
numpy, torch and the rank's own CUDA device's states), ``best_top1``, ``sampler_epoch``, ``skipped_steps`` and
``consecutive_skips`` (non-finite steps skipped), ``switches`` (each training switch's state under
its own name, e.g. ``{"ema": {"weights", "updates"}}``; the layout knows none of them), ``eval_weights``
(the switch whose ``weights`` are the evaluation's, or None), and the file format's ``meta``
(:mod:`softpool3d.engine.checkpoint`).

Which weights a checkpoint's model is: :func:`model_weights`. With ``weights="auto"`` (the test,
export, ``model.pretrained``) that is the ``eval_weights`` switch's (the EMA's when the run kept
one), else ``model``; resuming training restores both.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, Union

import numpy as np
import torch
from torch import nn

from softpool3d.engine.checkpoint import CheckpointError

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
                        rng: list[dict[str, Any]], switches: Optional[Mapping[str, Any]] = None,
                        eval_weights: Optional[str] = None) -> dict[str, Any]:
    """The checkpoint of a training run (see the module docstring), ready for :func:`save_checkpoint`;
    ``rng`` holds one :func:`rng_state` per rank, ``config`` is the plain-dict config, ``switches``
    the switches' states by name (:meth:`~softpool3d.engine.training.switches.TrainingSwitches.state_dict`) and
    ``eval_weights`` the switch whose ``weights`` are the evaluation's (None: the model's)."""
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
        "switches": dict(switches or {}),
        "eval_weights": eval_weights,
    }


def switch_states(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
    """``(switches, eval_weights)`` of ``checkpoint``. A checkpoint written before switches kept their
    own states holds the EMA at its top level (``ema``, ``ema_updates``): that is read as the switch
    ``ema``'s state ``{"weights", "updates"}``, its weights the evaluation's."""
    if "switches" in checkpoint:
        return dict(checkpoint["switches"]), checkpoint.get("eval_weights")
    if checkpoint.get("ema") is None:
        return {}, None
    return {"ema": {"weights": checkpoint["ema"], "updates": checkpoint.get("ema_updates", 0)}}, "ema"


class SwitchStates(Protocol):
    """What :func:`restore_training` gives the switches' states to (:class:`~softpool3d.engine.training.switches.TrainingSwitches`)."""

    def load_state_dict(self, states: Mapping[str, Any], path: Union[str, os.PathLike]) -> None: ...


def restore_training(checkpoint: Mapping[str, Any], path: Union[str, os.PathLike], model: nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, rank: int = 0,
                     world_size: int = 1, switches: Optional[SwitchStates] = None) -> Progress:
    """Load a :func:`training_checkpoint` (read from ``path``) into the training objects, the
    ``switches`` (their states by name, :func:`switch_states`) and this process's RNGs (rank ``rank``'s
    states, when the checkpoint has one per process of a ``world_size``-process run; otherwise a
    warning); returns its :class:`Progress`."""
    load_model_state(model, checkpoint, path, weights="model")
    if switches is not None:
        switches.load_state_dict(switch_states(checkpoint)[0], path)
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


def model_weights(checkpoint: Mapping[str, Any], weights: str = "auto",
                  path: Union[str, os.PathLike] = "checkpoint") -> Mapping[str, torch.Tensor]:
    """The state dict of ``checkpoint`` that ``weights`` names: ``auto`` (the evaluation weights: those of
    the switch ``eval_weights`` names, e.g. the EMA, else the model's), ``model`` (the raw weights) or a
    switch's name; a switch the run did not keep raises :class:`CheckpointError` naming ``path``."""
    states, eval_weights = switch_states(checkpoint)
    name = eval_weights if weights == "auto" else weights
    if name is None or name == "model":
        return checkpoint["model"]
    if "weights" not in (states.get(name) or {}):
        raise CheckpointError(f"checkpoint {path} holds no {name} weights (its run had no {name} switch)")
    return states[name]["weights"]


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
