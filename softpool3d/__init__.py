"""softpool3d: SoftPool for video action recognition."""
from softpool3d.ops import SoftPool1d, SoftPool2d, SoftPool3d, soft_pool1d, soft_pool2d, soft_pool3d
from softpool3d.replace import ReplacementReport, replace_pooling

__all__ = ["ReplacementReport", "SoftPool1d", "SoftPool2d", "SoftPool3d", "replace_pooling", "soft_pool1d", "soft_pool2d",
           "soft_pool3d"]
__version__ = "0.1.0"
