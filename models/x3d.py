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
from softpool3d.models.registry import ModelInfo, model_info, new_classifier, register_model


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
    Input ``(N, 3, T, H, W)``, output ``(N, num_classes)``; the classifier is ``blocks[5].proj``.
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` -> last-stage features ``(N, 192, T, H / 32, W / 32)`` (stem and four stages)."""
        for block in self.blocks[:5]:
            x = block(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Last-stage features ``(N, 192, T', H', W')`` -> logits ``(N, num_classes)``: the projected
        head (1x1x1 conv to 432, global pooling, 1x1x1 conv to 2048), dropout, ``proj``."""
        return self.blocks[5](features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final ``nn.Linear`` (``blocks[5].proj``)."""
        return self.blocks[5].proj

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``blocks[5].proj`` by a freshly initialised ``num_classes``-way ``nn.Linear`` on its
        device and dtype (weights from N(0, 0.01), zero bias, as pytorchvideo's init); build
        optimizers after this call."""
        self.blocks[5].proj = new_classifier(self.blocks[5].proj, num_classes)


KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
"""Normalisation of pytorchvideo's X3D weights (its model zoo's and torch hub's transform)."""

_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_PARAMS_SOURCE = "pytorchvideo model zoo (docs/source/model_zoo.md, Kinetics-400)"
_GMACS_SOURCE = "X3D paper (Feichtenhofer, CVPR 2020), at the training clip"


def x3d_info(clip_size: tuple[int, int, int], checkpoint: str, params_m: float, gmacs: float) -> ModelInfo:
    """The record of an X3D model: pytorchvideo's Kinetics-400 weights ``checkpoint`` (a file of its
    model zoo), its normalisation, classifier ``blocks.5.proj``, published params and GMACs."""
    return ModelInfo(
        clip_size=clip_size,
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        classifier="blocks.5.proj",
        weights=f"pytorchvideo model zoo, Kinetics-400 ({checkpoint})",
        weights_url=f"{_ZOO}/{checkpoint}",
        params_m=params_m,
        params_source=_PARAMS_SOURCE,
        gmacs=gmacs,
        gmacs_source=_GMACS_SOURCE,
    )


def _x3d(name: str, depth_factor: float, num_classes: int, pool: str, dropout: float = 0.5) -> X3D:
    clip_size = model_info(name).clip_size  # pytorchvideo sizes its head's pooling window from the clip
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


@register_model(x3d_info((4, 160, 160), "X3D_XS.pyth", params_m=3.79, gmacs=0.60))
def x3d_xs(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-XS: width factor 2.0, depth factor 2.2, standard clip 4x160x160.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d("x3d_xs", 2.2, num_classes, pool, **kw)


@register_model(x3d_info((13, 160, 160), "X3D_S.pyth", params_m=3.79, gmacs=1.96))
def x3d_s(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-S: width factor 2.0, depth factor 2.2, standard clip 13x160x160.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d("x3d_s", 2.2, num_classes, pool, **kw)


@register_model(x3d_info((16, 224, 224), "X3D_M.pyth", params_m=3.79, gmacs=4.73))
def x3d_m(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-M: width factor 2.0, depth factor 2.2, standard clip 16x224x224.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d("x3d_m", 2.2, num_classes, pool, **kw)


@register_model(x3d_info((16, 312, 312), "X3D_L.pyth", params_m=6.15, gmacs=18.4))
def x3d_l(num_classes: int = 400, pool: str = "soft", **kw: Any) -> X3D:
    """X3D-L: width factor 2.0, depth factor 5.0, standard clip 16x312x312.

    Pools (kind ``pool``) at every squeeze-excitation and the head's global pooling.
    Keywords: ``dropout`` (0.5, before the classifier).
    """
    return _x3d("x3d_l", 5.0, num_classes, pool, **kw)
