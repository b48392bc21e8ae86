"""softpool3d: SoftPool for video action recognition."""
from softpool3d.ops import (
    SoftAdaptivePool1d,
    SoftAdaptivePool2d,
    SoftAdaptivePool3d,
    SoftPool1d,
    SoftPool2d,
    SoftPool3d,
    soft_adaptive_pool1d,
    soft_adaptive_pool2d,
    soft_adaptive_pool3d,
    soft_pool1d,
    soft_pool2d,
    soft_pool3d,
)
from softpool3d.replace import ReplacementReport, replace_pooling

__all__ = [
    "ReplacementReport",
    "SoftAdaptivePool1d",
    "SoftAdaptivePool2d",
    "SoftAdaptivePool3d",
    "SoftPool1d",
    "SoftPool2d",
    "SoftPool3d",
    "replace_pooling",
    "soft_adaptive_pool1d",
    "soft_adaptive_pool2d",
    "soft_adaptive_pool3d",
    "soft_pool1d",
    "soft_pool2d",
    "soft_pool3d",
]
__version__ = "0.1.0"
