"""Video action recognition backbones with SoftPool, max or avg pooling chosen by config.

``build_model(name, num_classes, pool="soft", **kw)`` builds any name of ``list_models()``:
3D-ResNets and R(2+1)D (``resnet3d``), X3D (``x3d``), SRTG networks (``srtg``) and torchvision's
video networks with their pools swapped by ``softpool3d.replace_pooling`` (``torchvision.s3d``, ...;
``torchvision_video``).
``model_info(name)`` is the model's record (clip size, normalisation, classifier, published
params/GMACs and weights); every model has ``forward_features``, ``forward_head``,
``get_classifier`` and ``reset_classifier`` (see ``softpool3d.models.registry``).
"""
from softpool3d.models import resnet3d, srtg, torchvision_video, x3d  # noqa: F401  (each registers its models)
from softpool3d.models.pooling import POOL_KINDS, GlobalPool3d, make_pool3d
from softpool3d.models.registry import NOT_PUBLISHED, ModelInfo, build_model, list_models, model_info, register_model
from softpool3d.models.torchvision_video import TorchvisionVideoModel
from softpool3d.models.weights import LoadReport, freeze_stages, load_pretrained

__all__ = [
    "NOT_PUBLISHED",
    "POOL_KINDS",
    "TorchvisionVideoModel",
    "GlobalPool3d",
    "LoadReport",
    "ModelInfo",
    "build_model",
    "freeze_stages",
    "list_models",
    "load_pretrained",
    "make_pool3d",
    "model_info",
    "register_model",
]
