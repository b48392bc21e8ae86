"""Training checkpoints: one dict format, written atomically, with every RNG state for exact resume.

A checkpoint holds ``model`` (state dict, no ``module.`` prefix), ``optimizer``, ``scheduler``,
``scaler`` (or None), ``epoch`` (the epoch in progress), ``step`` (optimizer steps done),
``step_in_epoch``, ``config`` (plain dict), ``classes``, ``rng`` (one entry per rank: python,
numpy, torch and cuda states), ``best_top1`` and ``sampler_epoch``.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "config", "classes")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or lacks what a run needs."""


def save_checkpoint(state: dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read a checkpoint on the CPU; raise :class:`CheckpointError` naming the file if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint of this package ({type(error).__name__} from torch.load)"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks keys {missing}")
    return state


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA, if any) RNG states, as types that
    ``torch.load(weights_only=True)`` accepts (numpy's key array becomes a tensor)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
