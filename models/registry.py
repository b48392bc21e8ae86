"""One registry of model builders (timm-like): files register their variants next to their definitions."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from torch import nn

from softpool3d.models.pooling import check_pool_kind

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CLIP_SIZES: dict[str, tuple[int, int, int]] = {}


def register_model(clip_size: tuple[int, int, int]) -> Callable[[Builder], Builder]:
    """Decorator factory: register a builder under its function name (which must be new).

    ``clip_size`` is the model's standard training clip ``(T, H, W)`` (one view), the size at
    which its published parameter count and FLOPs are quoted.
    """

    def register(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered by {_BUILDERS[name].__module__}")
        _BUILDERS[name] = builder
        _CLIP_SIZES[name] = tuple(clip_size)
        return builder

    return register


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_BUILDERS)


def default_clip_size(name: str) -> tuple[int, int, int]:
    """The standard training clip ``(T, H, W)`` of model ``name``."""
    if name not in _CLIP_SIZES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _CLIP_SIZES[name]


def build_model(name: str, num_classes: int, pool: str = "soft", **kw: Any) -> nn.Module:
    """Build model ``name`` with a ``num_classes``-way head and every pooling layer of kind ``pool``.

    The model maps a clip ``(N, 3, T, H, W)`` to logits ``(N, num_classes)``. Extra keywords go
    to the builder (e.g. ``width``, ``dropout``, ``stem_pool``, ``srtg``; see its docstring).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    check_pool_kind(pool)
    return _BUILDERS[name](num_classes=num_classes, pool=pool, **kw)
