"""SoftPool as a drop-in: swap the pooling layers of any network for SoftPool of the same geometry.

:func:`replace_pooling` walks a model and replaces, in place, every ``nn.MaxPool{1,2,3}d``,
``nn.AvgPool{1,2,3}d`` and ``nn.AdaptiveAvgPool{1,2,3}d`` / ``nn.AdaptiveMaxPool{1,2,3}d`` by
``SoftPool{1,2,3}d`` (same ``kernel_size``, ``stride``, ``padding``, ``ceil_mode``) or
``SoftAdaptivePool{1,2,3}d`` (same ``output_size``). The output shape of each rewritten layer is
the original's: the SoftPool ops follow ``F.avg_pool*d``'s and ``F.adaptive_avg_pool*d``'s size
rules, which are also max pooling's at ``dilation=1``. Pools have no parameters or buffers, so the
state dict keeps its keys and pretrained weights still load.

``count_include_pad``: SoftPool never lets a padded position into a window (the padding is not a
value, as in max pooling), so an ``AvgPool`` with ``count_include_pad=True`` and ``padding > 0``
becomes, at the borders, a SoftPool over the window's real positions only, as if it had been
``count_include_pad=False``. Interior windows are unaffected.

What a module swap cannot reach is reported, not changed: a max pool with ``dilation > 1``, a pool
with ``return_indices=True`` (its caller unpacks indices), an average pool with
``divisor_override``, pools of other kinds (``LPPool``, ``FractionalMaxPool``), and pooling
called functionally (``F.max_pool2d(...)``) in a module's code, found by reading the source of each
module's class.
"""
from __future__ import annotations

import ast
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from typing import Iterable, Optional

from torch import nn

from softpool3d.ops import (
    SoftAdaptivePool1d, SoftAdaptivePool2d, SoftAdaptivePool3d, SoftPool1d, SoftPool2d, SoftPool3d,
)

SOURCE_KINDS = ("max", "avg", "adaptive")
"""The layer kinds :func:`replace_pooling` can replace: ``MaxPoolNd``, ``AvgPoolNd`` and
``AdaptiveAvgPoolNd``/``AdaptiveMaxPoolNd``."""

POOL_KINDS = ("soft", "max", "avg")
"""The pooling kinds, of :func:`replace_pooling` and of the models' ``pool`` (``model.pool``): what the layers become: SoftPool, or max or average pooling of the same geometry (average
pooling without padded positions, ``count_include_pad=False``, as the models' ``avg`` kind).
SoftPool and max pooling accept any input the padded window fits; torch's ``avg_pool3d`` also
wants the unpadded input at least as large as the window (S3D's 3x3x3 pools over 2 frames fail)."""

_WINDOWED = {nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2), nn.MaxPool3d: ("max", 3),
             nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2), nn.AvgPool3d: ("avg", 3)}
_ADAPTIVE = {nn.AdaptiveMaxPool1d: ("max", 1), nn.AdaptiveMaxPool2d: ("max", 2), nn.AdaptiveMaxPool3d: ("max", 3),
             nn.AdaptiveAvgPool1d: ("avg", 1), nn.AdaptiveAvgPool2d: ("avg", 2), nn.AdaptiveAvgPool3d: ("avg", 3)}
_OTHER_POOLS = (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)

_WINDOWED_TARGETS: dict[str, tuple[type[nn.Module], ...]] = {
    "soft": (SoftPool1d, SoftPool2d, SoftPool3d),
    "max": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
    "avg": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
}
_ADAPTIVE_TARGETS: dict[str, tuple[type[nn.Module], ...]] = {
    "soft": (SoftAdaptivePool1d, SoftAdaptivePool2d, SoftAdaptivePool3d),
    "max": (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
    "avg": (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
}

_FUNCTIONAL_POOL = re.compile(r"^(adaptive_)?(max|avg|lp)_pool[123]d(_with_indices)?$|^fractional_max_pool[23]d$")
"""Names of torch's functional pools (``F.max_pool2d``, ``torch.avg_pool1d``, ``F.adaptive_avg_pool3d``, ...)."""


@dataclass(frozen=True)
class ReplacedLayer:
    """One layer :func:`replace_pooling` swapped: its qualified ``name`` and both layers' reprs."""

    name: str
    before: str
    after: str


@dataclass(frozen=True)
class LeftLayer:
    """One pooling site :func:`replace_pooling` left as it was: the qualified ``name`` of the layer
    (or of the module whose code calls a functional pool), what it is, and why it stays."""

    name: str
    layer: str
    reason: str


@dataclass
class ReplacementReport:
    """What :func:`replace_pooling` did to one model: layers ``replaced`` and pooling ``left``."""

    pool: str
    replaced: list[ReplacedLayer] = field(default_factory=list)
    left: list[LeftLayer] = field(default_factory=list)

    @property
    def functional_callers(self) -> list[str]:
        """Names of the modules whose code calls a functional pool."""
        return [entry.name for entry in self.left if entry.reason.startswith("calls ")]

    def lines(self) -> list[str]:
        """The report, one line per layer, for logs and summaries."""
        head = f"pooling -> {self.pool}: {len(self.replaced)} layer(s) replaced, {len(self.left)} left"
        return ([head] + [f"  replaced {entry.name}: {entry.before} -> {entry.after}" for entry in self.replaced]
                + [f"  left {entry.name} ({entry.layer}): {entry.reason}" for entry in self.left])


def _check_kinds(kinds: Iterable[str], pool: str) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in SOURCE_KINDS]
    if unknown:
        raise ValueError(f"kinds must be taken from {SOURCE_KINDS}, got {unknown}")
    if pool not in POOL_KINDS:
        raise ValueError(f"pool must be one of {POOL_KINDS}, got {pool!r}")
    return kinds


def _why_not(layer: nn.Module, kind: str, kinds: tuple[str, ...]) -> Optional[str]:
    """Why ``layer`` (of source ``kind``) cannot or need not be replaced, or None if it can."""
    if kind not in kinds:
        return f"kind {kind!r} not in kinds={kinds}"
    if getattr(layer, "return_indices", False):
        return "return_indices=True: its caller unpacks (values, indices)"
    dilation = getattr(layer, "dilation", 1)
    if any(d != 1 for d in (dilation if isinstance(dilation, tuple) else (dilation,))):
        return f"dilation={dilation} > 1: SoftPool windows are dense"
    if getattr(layer, "divisor_override", None):
        return f"divisor_override={layer.divisor_override}: SoftPool weights are not an average"
    return None


def _replacement(layer: nn.Module, pool: str) -> Optional[nn.Module]:
    """The layer of kind ``pool`` with ``layer``'s geometry, or None when ``layer`` already is one."""
    if type(layer) in _WINDOWED:
        source, dims = _WINDOWED[type(layer)]
        if source == pool:
            return None
        target = _WINDOWED_TARGETS[pool][dims - 1]
        geometry = (layer.kernel_size, layer.stride, layer.padding)
        if pool == "avg":
            return target(*geometry, ceil_mode=layer.ceil_mode, count_include_pad=False)
        return target(*geometry, ceil_mode=layer.ceil_mode)
    source, dims = _ADAPTIVE[type(layer)]
    if source == pool:
        return None
    return _ADAPTIVE_TARGETS[pool][dims - 1](layer.output_size)


def _functional_pool_calls(cls: type) -> list[str]:
    """``"F.max_pool2d in package.module.Class, line N"`` for each call of a functional pool in the
    source of ``cls`` and its bases outside torch (their source read with ``inspect``)."""
    calls = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in ("torch", "builtins"):
            continue
        try:
            source, first_line = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        tree = ast.parse(textwrap.dedent("".join(source)))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if _FUNCTIONAL_POOL.match(name):
                calls.append(f"{ast.unparse(func)} in {klass.__module__}.{klass.__qualname__}, "
                             f"line {first_line + node.lineno - 1}")
    return calls


def replace_pooling(
    model: nn.Module, kinds: Iterable[str] = SOURCE_KINDS, pool: str = "soft"
) -> ReplacementReport:
    """Replace, in place and recursively, the pooling layers of ``model`` by layers of kind ``pool``.

    ``kinds``: which layers to replace, among ``"max"`` (``nn.MaxPool{1,2,3}d``), ``"avg"``
    (``nn.AvgPool{1,2,3}d``) and ``"adaptive"`` (``nn.AdaptiveAvgPool{1,2,3}d`` and
    ``nn.AdaptiveMaxPool{1,2,3}d``). ``pool``: ``"soft"`` (``SoftPool{1,2,3}d`` /
    ``SoftAdaptivePool{1,2,3}d``), or ``"max"`` / ``"avg"`` (torch's layers of the same geometry;
    a layer already of that kind stays, unreported). Each new layer takes the training mode of
    the layer it replaces; a layer shared by several parents is replaced by one shared layer.

    Returns a :class:`ReplacementReport`: every replaced layer, and every pooling site left with
    the reason (``dilation > 1``, ``return_indices=True``, ``divisor_override``, a pool kind
    without a counterpart, a kind outside ``kinds``, or a functional pool called in a module's
    code, which a module swap cannot reach; see the module docstring, also for what
    ``count_include_pad`` becomes).
    """
    kinds = _check_kinds(kinds, pool)
    report = ReplacementReport(pool)
    done: dict[int, Optional[nn.Module]] = {}
    seen_classes: dict[type, list[str]] = {}
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) not in _WINDOWED and type(child) not in _ADAPTIVE:
                if isinstance(child, _OTHER_POOLS) and id(child) not in done:
                    done[id(child)] = None
                    report.left.append(LeftLayer(name, repr(child), f"{type(child).__name__} has no {pool} counterpart"))
                continue
            if id(child) not in done:
                kind = "adaptive" if type(child) in _ADAPTIVE else _WINDOWED[type(child)][0]
                reason = _why_not(child, kind, kinds)
                new = None if reason else _replacement(child, pool)
                if reason:
                    report.left.append(LeftLayer(name, repr(child), reason))
                elif new is not None:
                    new.train(child.training)
                    report.replaced.append(ReplacedLayer(name, repr(child), repr(new)))
                done[id(child)] = new
            if done[id(child)] is not None:
                setattr(parent, child_name, done[id(child)])
    for name, module in model.named_modules():
        cls = type(module)
        if cls not in seen_classes:
            seen_classes[cls] = _functional_pool_calls(cls)
        for call in seen_classes[cls]:
            report.left.append(LeftLayer(name, cls.__name__, f"calls {call}: a module swap cannot reach it"))
    return report

