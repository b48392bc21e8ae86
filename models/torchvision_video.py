"""torchvision's video networks by name (``torchvision.<builder>``), their pools set by ``pool``.

``build_model("torchvision.s3d", num_classes, pool="soft")`` builds torchvision's network with a
``num_classes``-way classifier, then turns every pooling layer into kind ``pool`` with
:func:`softpool3d.replace_pooling` (``soft``: SoftPool and adaptive SoftPool; ``max``/``avg``: max
or average pooling of the same geometry). What was replaced and what was left is the model's
``pool_replacement`` report (:class:`softpool3d.ReplacementReport`), printed by the start-up summary.

Each network keeps torchvision's modules and state-dict keys, so torchvision's weight files load
with :func:`~softpool3d.models.load_pretrained`, and gains the models' interface
(``forward_features``, ``forward_head``, ``get_classifier``, ``reset_classifier``,
``stem_and_stages``) by taking one of the subclasses below as its class. Two changes, neither with
parameters of its own: S3D's 1x1x1 convolution classifier becomes the equivalent ``nn.Linear``
after the spatio-temporal mean (a hub file's ``(C_out, C_in, 1, 1, 1)`` weight loads into it), and
the networks whose head has no dropout (VideoResNet, Swin3D) get ``dropout`` before the classifier.
"""
from __future__ import annotations

from typing import Any, Type, TypeVar

import torch
from torch import nn
from torchvision.models import get_model_weights
from torchvision.models import video as tv_video
from torchvision.models.video.mvit import MViT
from torchvision.models.video.resnet import VideoResNet
from torchvision.models.video.s3d import S3D
from torchvision.models.video.swin_transformer import SwinTransformer3d

from softpool3d import ReplacementReport, replace_pooling
from softpool3d.models.registry import ModelInfo, new_classifier, register_model

Network = TypeVar("Network", bound=nn.Module)


class TorchvisionVideoModel:
    """The models' interface on a torchvision network whose classifier is ``CLASSIFIER``, and the
    report of the pool replacement its builder made (``pool_replacement``)."""

    CLASSIFIER = ""
    pool_replacement: ReplacementReport

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final ``nn.Linear`` (named ``CLASSIFIER`` in the model)."""
        return self.get_submodule(self.CLASSIFIER)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised ``num_classes``-way ``nn.Linear`` on its
        device and dtype (weights from N(0, 0.01), zero bias); build optimizers after this call."""
        parent, _, name = self.CLASSIFIER.rpartition(".")
        setattr(self.get_submodule(parent), name, new_classifier(self.get_classifier(), num_classes))


class TorchvisionVideoResNet(TorchvisionVideoModel, VideoResNet):
    """torchvision's ``r3d_18``, ``mc3_18`` and ``r2plus1d_18``; classifier ``fc``."""

    CLASSIFIER = "fc"
    head_dropout: nn.Dropout

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` -> ``layer4``'s features ``(N, 512, T', H', W')``."""
        x = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, 512, T', H', W')`` -> logits ``(N, num_classes)``: ``avgpool``, dropout, ``fc``."""
        return self.fc(self.head_dropout(self.avgpool(features).flatten(1)))

    def stem_and_stages(self) -> list[list[nn.Module]]:
        """Freezing groups: ``[[stem], [layer1], ..., [layer4]]``."""
        return [[self.stem], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]


class TorchvisionS3D(TorchvisionVideoModel, S3D):
    """torchvision's ``s3d``; classifier ``classifier.1``, an ``nn.Linear`` applied after the mean
    over T', H', W' (torchvision applies the same map as a 1x1x1 convolution before the mean)."""

    CLASSIFIER = "classifier.1"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` -> ``(N, 1024, T/8, H/32, W/32)`` (``features``)."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, 1024, T', 7, 7)`` -> logits: ``avgpool`` (window 2x7x7), mean over what is left,
        dropout, linear classifier."""
        return self.classifier(self.avgpool(features).mean(dim=(2, 3, 4)))

    def stem_and_stages(self) -> list[list[nn.Module]]:
        """Freezing groups: the stem (convs 1a-2c) and the three Inception stages (3, 4, 5)."""
        features = list(self.features)
        return [features[:5], features[5:7], features[7:13], features[13:]]


class TorchvisionMViT(TorchvisionVideoModel, MViT):
    """torchvision's ``mvit_v1_b`` and ``mvit_v2_s``; classifier ``head.1``.

    Their features are tokens: ``forward_features`` returns ``(N, 1 + T'H'W', C)`` with the
    class token first, and the head reads that token.
    """

    CLASSIFIER = "head.1"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 16, 224, 224)`` (the size the position encoding is built for) -> normalised
        tokens ``(N, 1 + 8 * 7 * 7, 768)``, class token first."""
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = self.pos_encoding(x)
        thw = (self.pos_encoding.temporal_size, *self.pos_encoding.spatial_size)
        for block in self.blocks:
            x, thw = block(x, thw)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Tokens ``(N, 1 + L, C)`` -> logits from the class token: dropout, linear."""
        return self.head(features[:, 0])

    def stem_and_stages(self) -> list[list[nn.Module]]:
        """Freezing groups: the patch projection with the position encoding, then one group per
        stage, a stage starting at each block that pools its skip connection (downsamples)."""
        groups: list[list[nn.Module]] = [[self.conv_proj, self.pos_encoding], []]
        for block in self.blocks:
            if block.pool_skip is not None and groups[-1]:
                groups.append([])
            groups[-1].append(block)
        return groups


class TorchvisionSwin3d(TorchvisionVideoModel, SwinTransformer3d):
    """torchvision's ``swin3d_t``, ``swin3d_s`` and ``swin3d_b``; classifier ``head``."""

    CLASSIFIER = "head"
    head_dropout: nn.Dropout

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` -> normalised features ``(N, C, T/2, H/32, W/32)``."""
        x = self.norm(self.features(self.pos_drop(self.patch_embed(x))))
        return x.permute(0, 4, 1, 2, 3)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, C, T', H', W')`` -> logits: ``avgpool`` (global), dropout, ``head``."""
        return self.head(self.head_dropout(self.avgpool(features).flatten(1)))

    def stem_and_stages(self) -> list[list[nn.Module]]:
        """Freezing groups: the patch embedding, then each stage with the patch merging before it."""
        features = list(self.features)
        return [[self.patch_embed], [features[0]], *(features[i : i + 2] for i in range(1, len(features), 2))]


def _adopt(network: nn.Module, interface: Type[Network]) -> Network:
    """``network`` with ``interface`` (a subclass of its class that adds only methods) as its
    class: its modules, tensors and state-dict keys stay as torchvision built them."""
    network.__class__ = interface
    return network


def _s3d_linear_classifier(network: TorchvisionS3D) -> None:
    conv = network.classifier[1]
    linear = nn.Linear(conv.in_channels, conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.flatten(1))
        linear.bias.copy_(conv.bias)
    network.classifier[1] = linear


def _build(builder: str, interface: Type[Network], num_classes: int, pool: str, dropout: float, **kw: Any) -> Network:
    """torchvision's ``builder`` (random weights) with the interface, then pools of kind ``pool``."""
    if "width" in kw:
        raise ValueError(f"torchvision.{builder} has no width knob (set model.width to null), got width={kw['width']!r}")
    head_has_dropout = interface in (TorchvisionS3D, TorchvisionMViT)
    if head_has_dropout:
        kw["dropout"] = dropout
    network = _adopt(getattr(tv_video, builder)(num_classes=num_classes, **kw), interface)
    if interface is TorchvisionS3D:
        _s3d_linear_classifier(network)
    if not head_has_dropout:
        network.head_dropout = nn.Dropout(dropout)
    network.pool_replacement = replace_pooling(network, pool=pool)
    return network


def torchvision_info(builder: str, clip_size: tuple[int, int, int], classifier: str) -> ModelInfo:
    """The record of torchvision's ``builder`` from its default weights' metadata."""
    weights = get_model_weights(builder).DEFAULT
    transform = weights.transforms()
    return ModelInfo(
        clip_size=clip_size,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        classifier=classifier,
        weights=f"torchvision {weights}",
        weights_url=weights.url,
        params_m=weights.meta["num_params"] / 1e6,
        params_source=f"torchvision {weights}.meta['num_params']",
        gmacs=weights.meta["_ops"],
        gmacs_source=f"torchvision {weights}.meta['_ops'] (called GFLOPS; multiply-adds)",
    )


def _register(builder: str, interface: Type[nn.Module], clip_size: tuple[int, int, int], default_dropout: float) -> None:
    def build(num_classes: int = 400, pool: str = "soft", dropout: float = default_dropout, **kw: Any) -> nn.Module:
        return _build(builder, interface, num_classes, pool, dropout, **kw)

    build.__name__ = f"torchvision.{builder}"
    build.__doc__ = (f"torchvision's ``{builder}`` with every pooling layer of kind ``pool`` (see "
                     f":mod:`softpool3d.models.torchvision_video`); ``dropout`` before the classifier "
                     f"(default {default_dropout}); other keywords go to torchvision's builder. "
                     f"Standard clip {'x'.join(map(str, clip_size))}.")
    register_model(torchvision_info(builder, clip_size, interface.CLASSIFIER), name=build.__name__)(build)


_RESNET_CLIP = (16, 112, 112)
_CLIP_224 = (16, 224, 224)
for _builder, _interface, _clip, _dropout in [
    ("r3d_18", TorchvisionVideoResNet, _RESNET_CLIP, 0.0),
    ("mc3_18", TorchvisionVideoResNet, _RESNET_CLIP, 0.0),
    ("r2plus1d_18", TorchvisionVideoResNet, _RESNET_CLIP, 0.0),
    ("s3d", TorchvisionS3D, _CLIP_224, 0.2),
    ("mvit_v1_b", TorchvisionMViT, _CLIP_224, 0.5),
    ("mvit_v2_s", TorchvisionMViT, _CLIP_224, 0.5),
    ("swin3d_t", TorchvisionSwin3d, _CLIP_224, 0.0),
    ("swin3d_s", TorchvisionSwin3d, _CLIP_224, 0.0),
    ("swin3d_b", TorchvisionSwin3d, _CLIP_224, 0.0),
]:
    _register(_builder, _interface, _clip, _dropout)
