"""Video action recognition backbones with SoftPool, max or avg pooling chosen by config.

``build_model(name, num_classes, pool="soft", **kw)`` builds any name of ``list_models()``.
"""
from softpool3d.models import resnet3d  # noqa: F401  (registers r3d_* and r2plus1d_*)
from softpool3d.models.pooling import POOL_KINDS, GlobalPool3d, make_pool3d
from softpool3d.models.registry import build_model, list_models, register_model

__all__ = ["POOL_KINDS", "GlobalPool3d", "build_model", "list_models", "make_pool3d", "register_model"]
