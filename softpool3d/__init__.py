"""softpool3d: SoftPool for video action recognition.

The op's names are loaded from :mod:`softpool3d.ops` (which imports torch and registers the
``softpool3d::`` custom ops) on first use, so that the command lines answer ``--help`` without
importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

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


_MODULE_OF = {"ReplacementReport": "softpool3d.replace", "replace_pooling": "softpool3d.replace"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(_MODULE_OF.get(name, "softpool3d.ops")), name)
    raise AttributeError(f"module 'softpool3d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
