"""3D-ResNet (r3d) and R(2+1)D backbones on torchvision's ``VideoResNet`` blocks.

Structure and state-dict keys are torchvision's (``stem.*``, ``layer1..4.*``, ``fc.*``), so
``torchvision.models.video.r3d_18`` / ``r2plus1d_18`` weights load unchanged. Additions: a
``width`` knob (channels of the stem and first stage; stages ``i`` have ``width * 2**i``
planes), an optional stem pooling, a pool-kind switch for every pooling layer, and dropout
before the classifier. None of the additions has parameters.
"""
from __future__ import annotations

from typing import Any, Sequence, Type, Union

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Bottleneck, Conv2Plus1D, Conv3DSimple, VideoResNet

from softpool3d.models.pooling import GlobalPool3d, check_pool_kind, make_pool3d
from softpool3d.models.registry import ModelInfo, new_classifier, register_model

Block = Type[Union[BasicBlock, Bottleneck]]
ConvMaker = Type[Union[Conv3DSimple, Conv2Plus1D]]


def basic_stem(width: int = 64) -> nn.Sequential:
    """torchvision's ``BasicStem`` at ``width`` output channels: 3x7x7 conv, stride 1x2x2, BN, ReLU."""
    return nn.Sequential(
        nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def r2plus1d_stem(width: int = 64) -> nn.Sequential:
    """torchvision's ``R2Plus1dStem`` at ``width`` output channels: 1x7x7 then 3x1x1 conv.

    The middle width is torchvision's 45 at ``width=64``, scaled proportionally otherwise.
    """
    mid = max(1, round(45 * width / 64))
    return nn.Sequential(
        nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class ResNet3d(VideoResNet):
    """A torchvision ``VideoResNet`` with a width knob, optional stem pooling and a pool-kind switch.

    Pools at: the stem (``stem_pool=True`` only; window 1x3x3, stride 1x2x2, padding 0x1x1,
    placed after the stem's last ReLU) and the global head pooling over T x H x W before ``fc``.
    Both use ``pool``. Input ``(N, 3, T, H, W)``, output logits ``(N, num_classes)``; the
    classifier is ``fc``.
    """

    def __init__(
        self,
        block: Block,
        conv_makers: Sequence[ConvMaker],
        layers: Sequence[int],
        stem: nn.Module,
        num_classes: int = 400,
        pool: str = "soft",
        width: int = 64,
        stem_pool: bool = False,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        # VideoResNet.__init__ fixes the widths at 64..512; its _make_layer is reused as is.
        nn.Module.__init__(self)
        check_pool_kind(pool)
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.pool_kind = pool
        self.inplanes = width
        self.stem = stem
        self.stem_pool = make_pool3d(pool, (1, 3, 3), (1, 2, 2), (0, 1, 1)) if stem_pool else nn.Identity()
        self.layer1 = self._make_layer(block, conv_makers[0], width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, conv_makers[1], width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, conv_makers[2], width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, conv_makers[3], width * 8, layers[3], stride=2)
        self.pool = GlobalPool3d(pool)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's initialisation; ``zero_init_residual`` zeroes each block's last BN scale."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.conv3[1].weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.conv2[1].weight)

    def stages(self) -> list[nn.Sequential]:
        """The four residual stages ``layer1..layer4``."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def stem_and_stages(self) -> list[list[nn.Module]]:
        """Freezing groups: ``[[stem], [layer1], ..., [layer4]]``."""
        return [[self.stem], *([stage] for stage in self.stages())]

    def forward_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run residual stage ``index`` (0-based) on ``(N, C, T, H, W)``."""
        return self.stages()[index](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` -> last-stage features ``(N, 8 * width * expansion, T', H', W')``."""
        x = self.stem_pool(self.stem(x))
        for index in range(4):
            x = self.forward_stage(index, x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Last-stage features ``(N, C, T', H', W')`` -> logits ``(N, num_classes)``: global pooling,
        dropout, ``fc``."""
        return self.fc(self.dropout(self.pool(features).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final ``nn.Linear`` (``fc``)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised ``num_classes``-way ``nn.Linear`` on its device and
        dtype (weights from N(0, 0.01), zero bias); build optimizers after this call."""
        self.fc = new_classifier(self.fc, num_classes)


KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
"""Normalisation of torchvision's video weights (its ``VideoClassification`` preset), used by the
whole ResNet family, with weights or without."""


def resnet_info(**facts: Any) -> ModelInfo:
    """The record of a ResNet-family model: clip 16x112x112, torchvision's Kinetics normalisation,
    classifier ``fc``; ``facts`` adds its weights and published figures."""
    return ModelInfo(clip_size=(16, 112, 112), mean=KINETICS_MEAN, std=KINETICS_STD, classifier="fc", **facts)


def _resnet(
    block: Block,
    conv_maker: ConvMaker,
    layers: Sequence[int],
    r2plus1d: bool,
    num_classes: int,
    pool: str,
    width: int = 64,
    model_class: Type[ResNet3d] = ResNet3d,
    **kw: Any,
) -> ResNet3d:
    stem = r2plus1d_stem(width) if r2plus1d else basic_stem(width)
    return model_class(block, [conv_maker] * 4, layers, stem, num_classes, pool, width=width, **kw)


@register_model(
    resnet_info(
        weights="torchvision R3D_18_Weights.KINETICS400_V1",
        weights_url="https://download.pytorch.org/models/r3d_18-b3b3357e.pth",
        params_m=33.371472,
        params_source="torchvision R3D_18_Weights.KINETICS400_V1.meta['num_params']",
        gmacs=40.697,
        gmacs_source="torchvision R3D_18_Weights.KINETICS400_V1.meta['_ops'] (called GFLOPS; multiply-adds)",
    )
)
def r3d_18(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """3D-ResNet-18 (torchvision ``r3d_18``): basic blocks [2, 2, 2, 2], 3x3x3 convs.

    Pools (kind ``pool``) at the global head and, with ``stem_pool=True``, after the stem.
    Keywords: ``width`` (64), ``stem_pool`` (False, as torchvision), ``dropout`` (0.0),
    ``zero_init_residual`` (False). Standard clip 16x112x112.
    """
    return _resnet(BasicBlock, Conv3DSimple, [2, 2, 2, 2], False, num_classes, pool, **kw)


@register_model(resnet_info())
def r3d_34(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """3D-ResNet-34: basic blocks [3, 4, 6, 3], 3x3x3 convs.

    Pools (kind ``pool``) at the global head and, with ``stem_pool=True``, after the stem.
    Keywords: ``width`` (64), ``stem_pool`` (False, as torchvision), ``dropout`` (0.0),
    ``zero_init_residual`` (False). Standard clip 16x112x112.
    """
    return _resnet(BasicBlock, Conv3DSimple, [3, 4, 6, 3], False, num_classes, pool, **kw)


@register_model(resnet_info())
def r3d_50(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """3D-ResNet-50: bottlenecks (expansion 4) [3, 4, 6, 3], 3x3x3 convs.

    Pools (kind ``pool``) at the global head and, with ``stem_pool=True``, after the stem.
    Keywords: ``width`` (64), ``stem_pool`` (False, as torchvision), ``dropout`` (0.0),
    ``zero_init_residual`` (False). Standard clip 16x112x112.
    """
    return _resnet(Bottleneck, Conv3DSimple, [3, 4, 6, 3], False, num_classes, pool, **kw)


@register_model(resnet_info())
def r3d_101(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """3D-ResNet-101: bottlenecks (expansion 4) [3, 4, 23, 3], 3x3x3 convs.

    Pools (kind ``pool``) at the global head and, with ``stem_pool=True``, after the stem.
    Keywords: ``width`` (64), ``stem_pool`` (False, as torchvision), ``dropout`` (0.0),
    ``zero_init_residual`` (False). Standard clip 16x112x112.
    """
    return _resnet(Bottleneck, Conv3DSimple, [3, 4, 23, 3], False, num_classes, pool, **kw)


@register_model(resnet_info())
def r3d_152(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """3D-ResNet-152: bottlenecks (expansion 4) [3, 8, 36, 3], 3x3x3 convs.

    Pools (kind ``pool``) at the global head and, with ``stem_pool=True``, after the stem.
    Keywords: ``width`` (64), ``stem_pool`` (False, as torchvision), ``dropout`` (0.0),
    ``zero_init_residual`` (False). Standard clip 16x112x112.
    """
    return _resnet(Bottleneck, Conv3DSimple, [3, 8, 36, 3], False, num_classes, pool, **kw)


@register_model(
    resnet_info(
        weights="torchvision R2Plus1D_18_Weights.KINETICS400_V1",
        weights_url="https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
        params_m=31.505325,
        params_source="torchvision R2Plus1D_18_Weights.KINETICS400_V1.meta['num_params']",
        gmacs=40.519,
        gmacs_source="torchvision R2Plus1D_18_Weights.KINETICS400_V1.meta['_ops'] (called GFLOPS; multiply-adds)",
    )
)
def r2plus1d_18(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """R(2+1)D-18 (torchvision ``r2plus1d_18``): basic blocks [2, 2, 2, 2], 1x3x3 + 3x1x1 convs.

    Pools (kind ``pool``) at the global head and, with ``stem_pool=True``, after the stem.
    Keywords: ``width`` (64), ``stem_pool`` (False, as torchvision), ``dropout`` (0.0),
    ``zero_init_residual`` (False). Standard clip 16x112x112.
    """
    return _resnet(BasicBlock, Conv2Plus1D, [2, 2, 2, 2], True, num_classes, pool, **kw)


@register_model(resnet_info())
def r2plus1d_34(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """R(2+1)D-34: basic blocks [3, 4, 6, 3], 1x3x3 + 3x1x1 convs.

    Pools (kind ``pool``) at the global head and, with ``stem_pool=True``, after the stem.
    Keywords: ``width`` (64), ``stem_pool`` (False, as torchvision), ``dropout`` (0.0),
    ``zero_init_residual`` (False). Standard clip 16x112x112.
    """
    return _resnet(BasicBlock, Conv2Plus1D, [3, 4, 6, 3], True, num_classes, pool, **kw)
