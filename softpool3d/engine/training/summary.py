"""What a run is about to do, logged at rank 0 before its first step."""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Optional

from omegaconf import DictConfig
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from softpool3d.engine.builders import model_keywords
from softpool3d.engine.processes.amp import precision_name, slow_bf16_warning
from softpool3d.engine.processes.distributed import DistInfo
from softpool3d.engine.splits import split_label
from softpool3d.models import TorchvisionVideoModel
from softpool3d.models.complexity import count_complexity

logger = logging.getLogger("softpool3d")

COMPLEXITY_BUDGET_S = 2.0
"""Multiply-adds are counted on the meta device unless that takes longer than this (some models
with Python loops, such as SRTG's LSTMs, take seconds); the summary then leaves them out."""


class _OverBudget(Exception):
    pass


class _Deadline(TorchDispatchMode):
    """Raises :class:`_OverBudget` from the first operator dispatched after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.end = time.perf_counter() + seconds

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        if time.perf_counter() > self.end:
            raise _OverBudget
        return func(*args, **(kwargs or {}))


def count_gmacs(cfg: DictConfig, num_classes: int, budget_s: float = COMPLEXITY_BUDGET_S) -> Optional[float]:
    """GMACs of one clip ``(1, 3, data.num_frames, data.crop_size, data.crop_size)`` through the
    ``model`` section's network (meta device, nothing computed), or None past ``budget_s`` seconds."""
    keywords = model_keywords(cfg)
    clip = (cfg.data.num_frames, cfg.data.crop_size, cfg.data.crop_size)
    try:
        with _Deadline(budget_s):
            return count_complexity(cfg.model.name, num_classes, keywords.pop("pool"), clip, **keywords).macs / 1e9
    except _OverBudget:
        return None


def _dataset_line(cfg: DictConfig, role: str, dataset: Any) -> str:
    if dataset is None:
        return f"  {split_label(cfg, role)}: not used"
    return (f"  {split_label(cfg, role)}: {dataset.num_videos} videos, {len(dataset.classes)} classes, "
            f"{dataset.num_missing} missing (not on disk), {len(dataset.skipped_files())} skipped (unreadable), "
            f"{dataset.num_views} view(s) per video" + (f"; from {dataset.source}" if dataset.source else ""))


def log_startup_summary(
    cfg: DictConfig,
    dist_info: DistInfo,
    datasets: Mapping[str, Any],
    model: nn.Module,
    steps_per_epoch: int,
    amp: str,
    amp_reason: str,
) -> None:
    """Log, at rank 0, the data of each split (``datasets``: ``train``/``val``/``test`` -> dataset or
    None), the model (params, GMACs), pool kind (for torchvision's networks, the layers
    ``replace_pooling`` swapped and left), device, precision (``amp`` resolved, with
    ``amp_reason``), world size, workers and steps per epoch; then the warning of an explicit
    bf16 on a CPU without native bf16."""
    if not dist_info.is_main:
        return
    data = cfg.data
    params = sum(p.numel() for p in model.parameters())
    gmacs = count_gmacs(cfg, len(datasets["train"].classes))
    macs = (f"{gmacs:.2f} GMACs per clip {data.num_frames}x{data.crop_size}x{data.crop_size}" if gmacs is not None
            else f"GMACs not counted (over {COMPLEXITY_BUDGET_S:g} s)")
    width = f" width {cfg.model.width}" if cfg.model.width is not None else ""
    clips_per_step = data.batch_size * cfg.train.accumulate * dist_info.world_size
    lines = [
        f"run {cfg.name}: dataset {data.dataset} at {data.root}",
        *(_dataset_line(cfg, role, datasets.get(role)) for role in ("train", "val", "test")),
        f"  model {cfg.model.name}{width}, pool {cfg.model.pool}: {params / 1e6:.2f} M params, {macs}",
        *(f"    {line}" for line in (model.pool_replacement.lines() if isinstance(model, TorchvisionVideoModel) else [])),
        f"  device {dist_info.device}, precision {precision_name(amp)} ({amp_reason})",
        f"  world size {dist_info.world_size}, data.num_workers {data.num_workers} per process",
        f"  {cfg.train.epochs} epochs x {steps_per_epoch} steps of {clips_per_step} videos "
        f"(data.batch_size {data.batch_size} x train.accumulate {cfg.train.accumulate} x {dist_info.world_size} "
        f"process(es)), validation every {cfg.train.val_every} epoch(s)",
    ]
    logger.info("%s", "\n".join(lines))
    warning = slow_bf16_warning(cfg.train.amp, dist_info.device)
    if warning is not None:
        logger.warning("%s", warning)
