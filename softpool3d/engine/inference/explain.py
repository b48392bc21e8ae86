"""Why a model predicts what it does: Grad-CAM on the last stage, and what a SoftPool layer keeps.

:func:`grad_cam` is Selvaraju et al.'s Grad-CAM on the last stage's features of any registered model,
through its ``forward_features`` / ``forward_head``: with ``A = forward_features(x)`` ``(N, C, T', H', W')``
and ``y_k`` the logit of class ``k``, ``alpha_c = mean_{t,h,w} dy_k / dA_c`` and the map is
``ReLU(sum_c alpha_c A_c)`` ``(N, T', H', W')``, upsampled to the clip's ``(T, H, W)``.

:func:`pool_weights` gives, for a SoftPool layer's input ``x``, each position's weight in its window,
``exp(x_i) / sum_j exp(x_j)`` (the softmax SoftPool sums ``x`` with), next to what max and average
pooling of the same windows keep (:func:`pool_outputs`): the paper's argument in pictures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from softpool3d import SoftPool3d, soft_pool3d
from softpool3d.engine.config import ConfigError
from softpool3d.models.pooling import GlobalPool3d


def grad_cam(model: nn.Module, clips: torch.Tensor, class_index: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of ``model`` (with ``forward_features``/``forward_head``) on normalized ``clips (N, C, T, H, W)``.

    Returns ``(cam, logits)``: ``cam (N, T', H', W')`` at the last stage's resolution, for class
    ``class_index`` (default: each clip's top-1 class), and ``logits (N, K)``. Raises ``ConfigError``
    for a model whose features are not a ``(N, C, T', H', W')`` map (MViT's are tokens).
    """
    with torch.enable_grad():
        features = model.forward_features(clips.detach().requires_grad_(True))  # grads reach A with frozen weights too
        if features.dim() != 5:
            raise ConfigError(f"Grad-CAM needs last-stage features (N, C, T, H, W); {type(model).__name__} gives "
                              f"{tuple(features.shape)} (tokens)")
        logits = model.forward_head(features)
        targets = logits.argmax(dim=1) if class_index is None else torch.full((len(logits),), class_index)
        chosen = logits.gather(1, targets.to(logits.device)[:, None]).sum()
        (gradients,) = torch.autograd.grad(chosen, features)
    alpha = gradients.mean(dim=(2, 3, 4), keepdim=True)
    return F.relu((alpha * features).sum(dim=1)).detach(), logits.detach()


def upsample_cam(cam: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """``cam (N, T', H', W')`` -> ``(N, T, H, W)`` (trilinear), each clip scaled to ``[0, 1]`` by its maximum."""
    maps = F.interpolate(cam[:, None].float(), size=size, mode="trilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
    return maps / peak[:, None, None, None]


def soft_pool_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's SoftPool layers by qualified name: windowed ``SoftPool3d`` and global ``GlobalPool3d("soft")``."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, SoftPool3d) or (isinstance(module, GlobalPool3d) and module.pool == "soft")}


def layer_input(model: nn.Module, layer: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """The input ``(N, C, T, H, W)`` that ``layer`` receives when ``model`` runs on ``clips`` (first call)."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()) if not seen else None)
    try:
        with torch.no_grad():
            model(clips)
    finally:
        handle.remove()
    if not seen:
        raise ConfigError(f"{type(layer).__name__} was not called by the model's forward")
    return seen[0]


def window_geometry(layer: nn.Module, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(kernel, stride, padding)`` of ``layer`` (3-tuples) on input ``x``; a global pool's window is all of it."""
    if isinstance(layer, GlobalPool3d):
        kernel = (1, *x.shape[-2:]) if layer.per_frame else tuple(x.shape[-3:])
        return kernel, kernel, (0, 0, 0)

    def triple(value) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3

    kernel = triple(layer.kernel_size)
    return kernel, triple(layer.stride if layer.stride is not None else kernel), triple(layer.padding)


def pool_weights(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """SoftPool's weight of each position of ``x (N, C, T, H, W)`` in its window, ``exp(x_i) / sum_j exp(x_j)``,
    over windows tiling ``x`` by ``kernel`` (stride = kernel; the tail of a size not divisible by the
    kernel forms smaller windows). Returns ``(N, C, T, H, W)``; each window's weights sum to 1."""
    n, c, t, h, w = x.shape
    kt, kh, kw = kernel
    pads = [0, -w % kw, 0, -h % kh, 0, -t % kt]
    padded = F.pad(x.double(), pads, value=float("-inf"))
    tiles = padded.reshape(n, c, padded.shape[2] // kt, kt, padded.shape[3] // kh, kh, padded.shape[4] // kw, kw)
    flat = tiles.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(*tiles.shape[:3], tiles.shape[4], tiles.shape[6], -1)
    weights = flat.softmax(dim=-1).reshape(*flat.shape[:5], kt, kh, kw).permute(0, 1, 2, 5, 3, 6, 4, 7)
    return weights.reshape(padded.shape)[..., :t, :h, :w].to(x.dtype)


@dataclass
class PoolOutputs:
    """What the three pool kinds keep of one input, each ``(N, C, T', H', W')`` over the same windows."""

    soft: torch.Tensor
    max: torch.Tensor
    avg: torch.Tensor


def pool_outputs(x: torch.Tensor, kernel, stride, padding) -> PoolOutputs:
    """SoftPool (the op), max and average pooling (padding not counted) of ``x (N, C, T, H, W)``."""
    return PoolOutputs(soft=soft_pool3d(x, kernel, stride, padding),
                       max=F.max_pool3d(x, kernel, stride, padding),
                       avg=F.avg_pool3d(x, kernel, stride, padding, count_include_pad=False))


def strongest_channel(x: torch.Tensor) -> int:
    """The channel of ``x (1, C, T, H, W)`` whose activations vary most (the most telling one to draw)."""
    return int(x[0].flatten(1).var(dim=1).argmax())


def cam_mass_inside(cam: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The fraction of ``cam (T, H, W)``'s total that falls inside ``box = (top, left, bottom, right)`` (pixels)."""
    top, left, bottom, right = box
    total = float(cam.sum())
    return float(cam[:, top:bottom, left:right].sum()) / total if total > 0 else 0.0
