"""The training switches: small objects with optional hooks, built from their config keys, that the
loop calls without knowing them by name (:class:`~softpool3d.engine.training.switches.base.TrainingSwitch`).

:data:`SWITCHES` lists them, in the order their hooks run: random erasing and mixup/CutMix of each
batch, the EMA of the weights, precise BatchNorm. The loop
holds one :class:`TrainingSwitches` and calls it at four points: each micro-batch goes through
:meth:`~TrainingSwitches.augment` (then the loss is :attr:`~TrainingSwitches.criterion`), each
optimizer step ends with :meth:`~TrainingSwitches.after_step`, each evaluation evaluates the
models that :meth:`~TrainingSwitches.eval_models` gives; checkpoints hold
:meth:`~TrainingSwitches.state_dict` (each switch's state under its name). With every switch off
(the default) a batch and its labels pass through unchanged and the loss is cross-entropy with label
smoothing (:class:`~softpool3d.engine.training.switches.mixing.SoftTargetCrossEntropy`, which also takes mixed targets).

A new switch is one module here (a :class:`~softpool3d.engine.training.switches.base.TrainingSwitch` and a
``build(cfg, context)`` that returns it when its config key turns it on, else None), its line in
:data:`SWITCHES` and its config key (off by default).

Randomness: erasing and mixing draw from :func:`step_generator` ``(seed, epoch, step, rank,
micro_batch)``, so each rank mixes differently and a resumed run draws what an uninterrupted one
did.
"""
from __future__ import annotations

import hashlib
import os
import struct
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from softpool3d.engine.training.switches import ema, erasing, mixing, precise_bn
from softpool3d.engine.training.switches.base import NamedModels, SwitchContext, TrainingSwitch

SWITCHES: dict[str, Callable[[DictConfig, SwitchContext], Optional[TrainingSwitch]]] = {
    erasing.RandomErasing.name: erasing.build,
    mixing.Mixing.name: mixing.build,
    ema.EmaSwitch.name: ema.build,
    precise_bn.PreciseBatchNorm.name: precise_bn.build,
}
"""Every switch: name -> ``build(cfg, context)`` (the switch, or None when its key leaves it off), in
the order the loop calls their hooks."""


def build_switches(cfg: DictConfig, context: SwitchContext) -> list[TrainingSwitch]:
    """The switches ``cfg`` turns on, in :data:`SWITCHES`' order."""
    built = [build(cfg, context) for build in SWITCHES.values()]
    return [switch for switch in built if switch is not None]


def step_generator(seed: int, epoch: int, step: int, rank: int, micro_batch: int) -> np.random.Generator:
    """A numpy generator seeded from a hash of ``(seed, epoch, step, rank, micro_batch)`` and nothing else."""
    key = hashlib.sha256(struct.pack("<5q", seed, epoch, step, rank, micro_batch)).digest()
    return np.random.default_rng(int.from_bytes(key[:16], "little"))


class TrainingSwitches:
    """The switches of a run on this rank (rank ``rank``, ``seed``: ``train.seed``), called in order;
    ``loss`` is the run's loss before the switches' :meth:`~TrainingSwitch.criterion`."""

    def __init__(self, switches: Sequence[TrainingSwitch], loss: nn.Module, seed: int, rank: int) -> None:
        self.switches, self.seed, self.rank = list(switches), seed, rank
        for switch in self.switches:
            loss = switch.criterion(loss)
        self.criterion = loss

    def augment(self, clips: torch.Tensor, labels: torch.Tensor, epoch: int, step: int,
                micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A training micro-batch on the device, clips ``(N, C, T, H, W)`` and labels ``(N,)`` -> clips
        and the targets of :attr:`criterion`: the labels, or ``(N, K)`` probabilities when mixing is on."""
        rng = step_generator(self.seed, epoch, step, self.rank, micro_batch)
        for switch in self.switches:
            clips, labels = switch.augment(clips, labels, rng)
        return clips, labels

    def after_step(self, model: nn.Module, updated: bool) -> None:
        """After an optimizer step (``updated``: False when the step was skipped as non-finite)."""
        for switch in self.switches:
            switch.after_step(model, updated)

    def eval_models(self, model: nn.Module, epoch: int, step: int) -> NamedModels:
        """The models to evaluate after training epoch ``epoch`` (0-based), at optimizer step ``step``,
        as ``(name, model)``: the first is the one that counts (its validation picks ``best.pt``; the
        test; export): ``[("model", model)]`` as each switch changes it (the EMA puts ``"ema"`` first and
        renames the model ``"raw"``; precise BN recomputes their statistics: collective)."""
        models: NamedModels = [("model", model)]
        for switch in self.switches:
            models = switch.eval_models(models, epoch, step)
        return models

    @property
    def eval_weights(self) -> Optional[str]:
        """The name of the switch whose saved ``weights`` are the checkpoint's evaluation weights, if any."""
        return next((switch.name for switch in self.switches if switch.gives_weights), None)

    def state_dict(self) -> dict[str, Any]:
        """``{name: state}`` of the switches that keep a state."""
        states = {switch.name: switch.state_dict() for switch in self.switches}
        return {name: state for name, state in states.items() if state is not None}

    def load_state_dict(self, states: Mapping[str, Any], path: Union[str, os.PathLike]) -> None:
        """Give each switch its state in ``states`` (read from checkpoint ``path``), or tell it there is none."""
        for switch in self.switches:
            if switch.name in states:
                switch.load_state_dict(states[switch.name])
            elif switch.state_dict() is not None:
                switch.missing_state(path)
