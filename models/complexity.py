"""Parameter counts and multiply-adds of the registered models, next to the published figures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from softpool3d.models.registry import build_model, default_clip_size

PUBLISHED: dict[str, tuple[float, float, str]] = {
    "r3d_18": (33.4, 40.7, "torchvision R3D_18_Weights (16x112x112)"),
    "r2plus1d_18": (31.5, 40.5, "torchvision R2Plus1D_18_Weights (16x112x112)"),
    "x3d_xs": (3.79, 0.60, "X3D paper, Feichtenhofer 2020 (4x160x160)"),
    "x3d_s": (3.79, 1.96, "X3D paper, Feichtenhofer 2020 (13x160x160)"),
    "x3d_m": (3.79, 4.73, "X3D paper, Feichtenhofer 2020 (16x224x224)"),
    "x3d_l": (6.15, 18.4, "X3D paper, Feichtenhofer 2020 (16x312x312)"),
}
"""Published ``(params in M, GMACs for one view, source)``."""


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
    clip = tuple(clip_size) if clip_size is not None else default_clip_size(name)
    with torch.device("meta"):
        model = build_model(name, num_classes, pool=pool, **kw).eval()
        clip_tensor = torch.empty(1, 3, *clip)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(clip_tensor)
    return Complexity(name, clip, params, counter.get_total_flops() / 2)
