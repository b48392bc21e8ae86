"""Datasets, models and autocast contexts built from a run config (the one place that maps config to objects)."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import ContextManager

import torch
from omegaconf import DictConfig
from torch import nn

from softpool3d.config import run_dir
from softpool3d.datasets import ClipDataset, make_demo_dataset
from softpool3d.datasets import build_dataset as build_clip_dataset
from softpool3d.models import build_model as build_network
from softpool3d.models import freeze_stages, load_pretrained

logger = logging.getLogger(__name__)


def set_threads(cfg: DictConfig) -> None:
    """Apply ``train.num_threads`` (0 leaves torch's default)."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)


def prepare_data(cfg: DictConfig) -> None:
    """Generate the demo videos into ``data.root`` when ``data.make_demo`` is set (idempotent)."""
    if cfg.data.make_demo:
        make_demo_dataset(Path(cfg.data.root))


def build_dataset(cfg: DictConfig, split: str, train: bool, num_clips: int = 1, num_crops: int = 1) -> ClipDataset:
    """``softpool3d.datasets.build_dataset`` with the ``data`` section's clip geometry; the paths
    of missing videos go to ``<run_dir>/missing_<split>.txt``."""
    data = cfg.data
    return build_clip_dataset(
        data.dataset,
        data.root,
        split,
        train=train,
        annotations=data.annotations,
        fold=data.fold,
        val_fraction=data.val_fraction,
        val_seed=data.val_seed,
        missing_list=run_dir(cfg) / f"missing_{split}.txt",
        num_frames=data.num_frames,
        sampling_rate=data.sampling_rate,
        num_clips=num_clips,
        num_crops=num_crops,
        crop_size=data.crop_size,
        train_scale=tuple(data.train_scale),
        test_scale=data.test_scale,
        mean=tuple(data.mean),
        std=tuple(data.std),
    )


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The ``model`` section's network with a ``num_classes``-way head; ``pretrained`` weights and
    ``freeze_stages`` applied (a new head is kept when the class count differs)."""
    kwargs = {"dropout": cfg.model.dropout}
    if cfg.model.width is not None:
        kwargs["width"] = cfg.model.width
    model = build_network(cfg.model.name, num_classes, pool=cfg.model.pool, **kwargs)
    if cfg.model.pretrained:
        report = load_pretrained(model, cfg.model.pretrained)
        if report.missing_keys:
            logger.warning("pretrained %s left %d keys untouched: %s", cfg.model.pretrained,
                           len(report.missing_keys), report.missing_keys[:5])
    if cfg.model.freeze_stages:
        freeze_stages(model, cfg.model.freeze_stages)
    return model


def autocast(device: torch.device, amp: str) -> ContextManager:
    """Mixed precision for ``amp`` in {"none", "bf16", "fp16"} on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
