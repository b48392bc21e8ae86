"""Parameter counts and multiply-adds of the registered models (the published figures are in
:func:`~softpool3d.models.model_info`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from softpool3d.models.registry import build_model, model_info


@dataclass
class Complexity:
    """Size of one model: ``params`` (count) and ``macs`` (multiply-adds of one clip ``clip_size``)."""

    name: str
    clip_size: tuple[int, int, int]
    params: int
    macs: float


def count_complexity(
    name: str, num_classes: int = 400, pool: str = "soft", clip_size: Optional[tuple[int, int, int]] = None, **kw: Any
) -> Complexity:
    """Count parameters and multiply-adds of model ``name`` on one clip ``(1, 3, T, H, W)``.

    The model is built on the meta device, so nothing is allocated or computed. Multiply-adds
    are ``torch.utils.flop_counter.FlopCounterMode``'s FLOPs / 2; like the published figures
    they cover convolutions and matrix products (LSTM gates included) but not normalisation,
    activations or pooling.
    """
    clip = tuple(clip_size) if clip_size is not None else model_info(name).clip_size
    with torch.device("meta"):
        model = build_model(name, num_classes, pool=pool, **kw).eval()
        clip_tensor = torch.empty(1, 3, *clip)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(clip_tensor)
    return Complexity(name, clip, params, counter.get_total_flops() / 2)
