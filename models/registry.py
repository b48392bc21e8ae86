"""One registry of model builders (timm-like): files register their variants next to their definitions."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from torch import nn

from softpool3d.models.pooling import check_pool_kind

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Builder) -> Builder:
    """Decorator: register ``builder`` under its function name; the name must be new."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered by {_BUILDERS[name].__module__}")
    _BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_BUILDERS)


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
