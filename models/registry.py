"""One registry of model builders (timm-like): files register their variants, with a record of
their facts (:class:`ModelInfo`), next to their definitions.

Every registered model has the same interface, for an input clip ``(N, 3, T, H, W)``:

- ``forward_features(x)``: the last stage's features ``(N, C, T', H', W')``, before any pooling;
- ``forward_head(features)``: logits ``(N, num_classes)``; ``forward(x)`` is
  ``forward_head(forward_features(x))``;
- ``get_classifier()``: the final ``nn.Linear``, whose weights produce the logits (named
  ``ModelInfo.classifier`` in the model);
- ``reset_classifier(num_classes)``: replaces it by a freshly initialised ``num_classes``-way one;
- ``stem_and_stages()``: the groups :func:`~softpool3d.models.freeze_stages` freezes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from torch import nn

from softpool3d.models.pooling import check_pool_kind

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

NOT_PUBLISHED = "not published"


@dataclass(frozen=True)
class ModelInfo:
    """The facts of one registered model (as timm's and torchvision's weight records keep them).

    ``clip_size``: the standard training clip ``(T, H, W)`` of one view, at which the params and
    GMACs are quoted. ``mean``/``std``: the per-channel (R, G, B) normalisation of frames in
    [0, 1] that the published weights expect (for a model without weights, its family's).
    ``classifier``: the qualified name of the final ``nn.Linear`` in the model.
    ``weights``: where published weights that load into this model come from, and
    ``weights_url`` the file (None when none is published). ``params_m`` (millions, at 400
    classes) and ``gmacs`` (multiply-adds of one clip ``clip_size``, in G) are published
    figures, each with its source; None with source :data:`NOT_PUBLISHED` when there is none.
    """

    clip_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classifier: str
    weights: str = "none published"
    weights_url: Optional[str] = None
    params_m: Optional[float] = None
    params_source: str = NOT_PUBLISHED
    gmacs: Optional[float] = None
    gmacs_source: str = NOT_PUBLISHED


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFOS: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo, name: Optional[str] = None) -> Callable[[Builder], Builder]:
    """Decorator factory: register a builder under ``name`` (default: its function name), which
    must be new, with ``info``, the record :func:`model_info` returns for it."""
    if not isinstance(info, ModelInfo):
        raise TypeError(f"register_model takes a ModelInfo record, got {info!r}")

    def register(builder: Builder) -> Builder:
        key = builder.__name__ if name is None else name
        if key in _BUILDERS:
            raise ValueError(f"model {key!r} is already registered by {_BUILDERS[key].__module__}")
        _BUILDERS[key] = builder
        _INFOS[key] = info
        return builder

    return register


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_BUILDERS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` record of model ``name``."""
    _check_name(name)
    return _INFOS[name]


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` if it is a positive int, else raise ``ValueError`` naming it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def new_classifier(old: nn.Linear, num_classes: int) -> nn.Linear:
    """A ``num_classes``-way ``nn.Linear`` with ``old``'s input size, device and dtype, initialised
    as the builders do (weights from N(0, 0.01), zero bias)."""
    check_num_classes(num_classes)
    classifier = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
    nn.init.normal_(classifier.weight, 0, 0.01)
    nn.init.zeros_(classifier.bias)
    return classifier


def build_model(name: str, num_classes: int, pool: str = "soft", **kw: Any) -> nn.Module:
    """Build model ``name`` with a ``num_classes``-way head and every pooling layer of kind ``pool``.

    The model maps a clip ``(N, 3, T, H, W)`` to logits ``(N, num_classes)``. Extra keywords go
    to the builder (e.g. ``width``, ``dropout``, ``stem_pool``, ``srtg``; see its docstring).
    """
    _check_name(name)
    check_num_classes(num_classes)
    check_pool_kind(pool)
    return _BUILDERS[name](num_classes=num_classes, pool=pool, **kw)
