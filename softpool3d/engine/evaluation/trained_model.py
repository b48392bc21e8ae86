"""A trained checkpoint applied to new data (``softpool3d-test``, prediction, export): the config it
is applied with, and its model with its weights."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig
from torch import nn

from softpool3d.engine import builders
from softpool3d.engine.config import from_container
from softpool3d.engine.training_state import load_model_state


def evaluation_config(stored: dict, overrides: Sequence[str] = (), checkpoint: str | Path = "checkpoint") -> DictConfig:
    """The config ``softpool3d-test`` evaluates with: the one ``stored`` in ``checkpoint`` with
    ``overrides`` applied, except ``train.device``, which is ``auto`` (the GPU when there is one)
    unless an override names it: the device a model was trained on says nothing of the machine
    that tests it."""
    stored = {**stored, "train": {**(stored.get("train") or {}), "device": "auto"}}
    return from_container(stored, overrides, source=f"config stored in {checkpoint}")


def trained_model(cfg: DictConfig, checkpoint: Mapping[str, Any], path: str | os.PathLike) -> nn.Module:
    """The architecture ``cfg`` names for the checkpoint's classes, with its weights
    (:func:`~softpool3d.engine.training_state.load_model_state`, ``weights="auto"``: the EMA when the run kept one)."""
    model = builders.build_architecture(cfg, len(checkpoint["classes"]))
    load_model_state(model, checkpoint, path)
    return model
