"""X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020).

Built by pytorchvideo's ``create_x3d`` (bottleneck factor 2.25, SE ratio 0.0625 on every
other block, swish, 1x3x3 + depthwise 5x1x1 stem, 432 -> 2048 projected head), then with its
pooling layers swapped for the chosen kind. Only parameter-free modules are swapped, so the
state-dict keys are pytorchvideo's (``blocks.*``) and its X3D checkpoints load unchanged.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
    from fvcore.nn.squeeze_excitation import SqueezeExcitation
    from pytorchvideo.layers.swish import Swish
    from pytorchvideo.models.net import Net
    from pytorchvideo.models.x3d import ProjectedPool, create_x3d

from softpool3d.models.pooling import GlobalPool3d, check_pool_kind
from softpool3d.models.registry import register_model


class PooledSqueezeExcitation(nn.Module):
    """Squeeze-excitation whose squeeze is a global pooling of kind ``pool``.

    ``(N, C, T, H, W) -> (N, C, T, H, W)``: ``x * block(pool(x))``, where ``block`` is
    fvcore's 1x1x1 conv -> ReLU -> 1x1x1 conv -> sigmoid (same parameter names).
    """

    def __init__(self, block: nn.Sequential, pool: str) -> None:
        super().__init__()
        self.pool = GlobalPool3d(pool)
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(self.pool(x))


class X3D(Net):
    """pytorchvideo's X3D ``Net`` (``blocks[0]`` stem, ``blocks[1..4]`` stages, ``blocks[5]`` head).

    Pools (kind ``pool``) at: the squeeze of every squeeze-excitation (inside every other
    bottleneck) and the global pooling of the projected head (pytorchvideo's fixed-size
    ``AvgPool3d``, which covers the whole map at the standard clip size, becomes a global
    pool over T x H x W, so any clip size works). pytorchvideo's final average over the
    already 1x1x1 logits map is dropped, and its custom-autograd ``Swish`` becomes the
    equivalent ``nn.SiLU`` (``x * sigmoid(x)``), which ``torch.compile`` traces natively.
    Input ``(N, 3, T, H, W)``, output ``(N, num_classes)``.
    """

    def __init__(self, net: Net, pool: str) -> None:
        super().__init__(blocks=net.blocks)
        self.pool_kind = check_pool_kind(pool)
        for module in list(self.modules()):
            for child_name, child in module.named_children():
                if isinstance(child, SqueezeExcitation):
                    setattr(module, child_name, PooledSqueezeExcitation(child.block, pool))
                elif isinstance(child, ProjectedPool):
                    child.pool = GlobalPool3d(pool)
                elif isinstance(child, Swish):
                    setattr(module, child_name, nn.SiLU())
        self.blocks[-1].output_pool = nn.Flatten()

    def stem_and_stages(self) -> list[list[nn.Module]]:
        """Freezing groups: ``[[blocks[0]], [blocks[1]], ..., [blocks[4]]]`` (stem, four stages)."""
        return [[block] for block in self.blocks[:5]]


def _x3d(clip_size: tuple[int, int, int], depth_factor: float, num_classes: int, pool: str, dropout: float = 0.5) -> X3D:
    net = create_x3d(
        input_clip_length=clip_size[0],
        input_crop_size=clip_size[1],
        model_num_class=num_classes,
        dropout_rate=dropout,
        width_factor=2.0,
        depth_factor=depth_factor,
        head_activation=None,
    )
    return X3D(net, pool)


@register_model(clip_size=(4, 160, 160))
def x3d_xs(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-XS: width factor 2.0, depth factor 2.2, standard clip 4x160x160.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d((4, 160, 160), 2.2, num_classes, pool, **kw)


@register_model(clip_size=(13, 160, 160))
def x3d_s(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-S: width factor 2.0, depth factor 2.2, standard clip 13x160x160.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d((13, 160, 160), 2.2, num_classes, pool, **kw)


@register_model(clip_size=(16, 224, 224))
def x3d_m(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-M: width factor 2.0, depth factor 2.2, standard clip 16x224x224.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d((16, 224, 224), 2.2, num_classes, pool, **kw)


@register_model(clip_size=(16, 312, 312))
def x3d_l(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-L: width factor 2.0, depth factor 5.0, standard clip 16x312x312.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d((16, 312, 312), 5.0, num_classes, pool, **kw)
