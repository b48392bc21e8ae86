"""Process-wide torch switches of a run: determinism, cuDNN autotuning and the memory format.

:func:`configure_determinism` runs before CUDA starts (``train()`` calls it before it picks the
device): ``train.deterministic=true`` needs ``CUBLAS_WORKSPACE_CONFIG`` set before cuBLAS creates
its first handle. :func:`check_deterministic_model` then refuses, before the first step, a model
whose CUDA backward torch cannot run deterministically.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from softpool3d.engine.config import ConfigError

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""The cuBLAS workspace setting that makes its matrix products deterministic (CUDA >= 10.2)."""

NONDETERMINISTIC_CUDA_BACKWARD = (nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                                  nn.FractionalMaxPool3d)
"""Modules whose CUDA backward raises under ``torch.use_deterministic_algorithms(True)``: with
``model.pool=avg`` that is the windowed ``nn.AvgPool3d`` (e.g. ResNet's ``stem_pool``); ``soft``
(our kernel), ``max`` (``nn.MaxPool3d``) and the global pools (a mean or an amax) have one."""


def configure_determinism(deterministic: bool) -> None:
    """``deterministic``: ``torch.use_deterministic_algorithms(True)``, cuDNN autotuning off and
    ``CUBLAS_WORKSPACE_CONFIG`` set (kept if the environment already sets it); call before CUDA
    starts. Otherwise nondeterministic algorithms are allowed and ``cudnn.benchmark`` picks the
    fastest convolution algorithm for each input shape (clips have one shape per run)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def check_deterministic_model(model: nn.Module, device: torch.device, deterministic: bool) -> None:
    """Raise :class:`ConfigError` when ``deterministic`` training on a CUDA ``device`` would reach a
    module of :data:`NONDETERMINISTIC_CUDA_BACKWARD` (torch would raise at the first backward)."""
    if not deterministic or device.type != "cuda":
        return
    found = [name for name, module in model.named_modules() if isinstance(module, NONDETERMINISTIC_CUDA_BACKWARD)]
    if found:
        kinds = sorted({type(model.get_submodule(name)).__name__ for name in found})
        raise ConfigError(f"train.deterministic=true on CUDA: the model's {', '.join(found[:5])} "
                          f"({', '.join(kinds)}) has no deterministic CUDA backward in torch; use model.pool=soft or "
                          f"max, or train.deterministic=false")


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last_3d`` for ``train.channels_last``, else the contiguous format."""
    return torch.channels_last_3d if channels_last else torch.contiguous_format
