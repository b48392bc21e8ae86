"""Loading weights into a model (ours, torchvision's, pytorchvideo's) and freezing early stages."""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Mapping, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]

_CHECKPOINT_KEYS = ("model", "model_state", "state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: keys of the model left as they were (``missing_keys``),
    keys of the source the model has no place for (``unexpected_keys``) and classifier keys
    skipped because their class count differs (``skipped_head_keys``)."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    skipped_head_keys: list[str] = field(default_factory=list)

    @property
    def skipped_head(self) -> bool:
        return bool(self.skipped_head_keys)


def _read_state_dict(source: Union[str, os.PathLike, StateDict]) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        try:
            loaded = torch.load(where, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise ValueError(f"cannot read weights from {where}: {error}") from error
    else:
        where, loaded = "the given state dict", source
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{where} holds a {type(loaded).__name__}, not a state dict or checkpoint dict")
    for key in _CHECKPOINT_KEYS:
        if key in loaded and isinstance(loaded[key], Mapping):
            where, loaded = f"{where}[{key!r}]", loaded[key]
            break
    state = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{where} is not a state dict: value of key {key!r} is a {type(value).__name__}")
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state, where


def _classifier_name(model: nn.Module) -> str:
    if not hasattr(model, "get_classifier"):
        raise TypeError(f"load_pretrained needs a model with get_classifier(), got {type(model).__name__}")
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier)


def _is_pointwise_conv_of(value: torch.Tensor, linear_weight: torch.Tensor) -> bool:
    """Whether ``value`` is a 1x1(x1) convolution's weight ``(out, in, 1, ...)`` of the same map as
    the linear weight ``(out, in)`` (torchvision's S3D classifier is such a convolution)."""
    return (linear_weight.dim() == 2 and value.dim() > 2 and all(size == 1 for size in value.shape[2:])
            and value.shape[:2] == linear_weight.shape)


def load_pretrained(model: nn.Module, path_or_state_dict: Union[str, os.PathLike, StateDict]) -> LoadReport:
    """Load weights into ``model`` in place, non-strictly, and report what matched.

    Accepts a path (read with ``torch.load(weights_only=True)``) or a mapping: a plain state dict
    (ours, torchvision's ``VideoResNet``, pytorchvideo's X3D), our checkpoint (``{"model": ...}``)
    or a pytorchvideo/SlowFast checkpoint (``{"model_state": ...}``); ``module.`` (DDP) and
    ``_orig_mod.`` (``torch.compile``) prefixes are stripped. ``model`` must provide the models'
    interface (``get_classifier``, ``reset_classifier``). A classifier stored as a 1x1x1
    convolution (torchvision's S3D) loads into the model's ``nn.Linear``. When the source's classifier has another
    shape (another class count), it is skipped and the model gets a freshly initialised one of its
    own class count by ``reset_classifier``, for fine-tuning; any other shape mismatch raises
    ``ValueError`` naming the key.
    """
    state, where = _read_state_dict(path_or_state_dict)
    own = model.state_dict()
    head = _classifier_name(model) + "."
    report = LoadReport()
    for key, value in list(state.items()):
        if key.startswith(head) and key in own and _is_pointwise_conv_of(value, own[key]):
            state[key] = value = value.flatten(1)
        if key in own and own[key].shape != value.shape:
            if not key.startswith(head):
                raise ValueError(
                    f"{where}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
                )
            report.skipped_head_keys.append(key)
            del state[key]
    result = model.load_state_dict(state, strict=False)
    if report.skipped_head:
        model.reset_classifier(model.get_classifier().out_features)
    report.missing_keys = [key for key in result.missing_keys if key not in report.skipped_head_keys]
    report.unexpected_keys = list(result.unexpected_keys)
    logger.info(
        "loaded %s: %d tensors, %d missing, %d unexpected, head skipped: %s",
        where,
        len(state) - len(report.unexpected_keys),
        len(report.missing_keys),
        len(report.unexpected_keys),
        report.skipped_head,
    )
    return report


class FrozenBatchNorm3d(nn.BatchNorm3d):
    """A ``BatchNorm3d`` that stays in eval mode (running statistics used, never updated)."""

    def train(self, mode: bool = True) -> "FrozenBatchNorm3d":
        return super().train(False)


def _freeze(module: nn.Module) -> None:
    module.requires_grad_(False)
    for submodule in module.modules():
        if type(submodule) is nn.BatchNorm3d:
            # FrozenBatchNorm3d only overrides train(): switching the class keeps tensors, device and keys.
            submodule.__class__ = FrozenBatchNorm3d
    module.eval()


def freeze_stages(model: nn.Module, num_stages: int) -> None:
    """Freeze the stem (``num_stages >= 1``) and the first ``num_stages - 1`` residual stages.

    Their parameters get ``requires_grad=False`` and their BatchNorms become
    :class:`FrozenBatchNorm3d` (same state-dict keys), which stay in eval mode through
    ``model.train()``. ``model`` must provide ``stem_and_stages()`` (every model of this package).
    """
    if not hasattr(model, "stem_and_stages"):
        raise TypeError(f"freeze_stages needs a model with stem_and_stages(), got {type(model).__name__}")
    groups = model.stem_and_stages()
    if not 0 <= num_stages <= len(groups):
        raise ValueError(f"num_stages must be in [0, {len(groups)}] for {type(model).__name__}, got {num_stages}")
    for group in groups[:num_stages]:
        for module in group:
            _freeze(module)
