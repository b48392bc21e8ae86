"""Precise BatchNorm statistics (``train.precise_bn_batches``): before an evaluation, replace each
BatchNorm's running mean and variance by their averages over a number of training batches.

The running statistics that training leaves are an exponential average over batches taken while
the weights moved; precise BN (Wu and Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's
``update_bn_stats``, used by SlowFast) recomputes them with the final weights: the mean over
batches of each batch's mean and (unbiased) variance. Under DDP each rank runs its own batches and
the per-rank sums are all-reduced, so every rank ends with the mean over all ranks' batches, the
same numbers one process gets from all of those batches. BatchNorms in eval mode (frozen stages)
are left as they are.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from softpool3d.datasets.device_decode import on_device
from softpool3d.engine.inputs import model_inputs
from softpool3d.engine.processes.amp import autocast
from softpool3d.engine.processes.distributed import all_reduce_sum
from softpool3d.engine.processes.loaders import EpochIndexed, run_loader
from softpool3d.engine.processes.sampler import ResumableDistributedSampler
from softpool3d.engine.training.switches.base import NamedModels, SwitchContext, TrainingSwitch

PRECISE_BN_SEED_OFFSET = 1
"""Precise BN shuffles the training set with ``train.seed`` plus this, apart from training's order."""


def training_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that are in training mode and track running statistics."""
    return [module for module in model.modules()
            if isinstance(module, _BatchNorm) and module.training and module.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(models: Sequence[nn.Module], batches: Iterable[torch.Tensor],
                       forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> int:
    """Set the running statistics of every training-mode BatchNorm of each model in ``models`` to the
    mean over ``batches`` (and over ranks, when a process group is up) of each batch's statistics.

    ``forward(model, clips)`` runs one model on one batch ``(N, C, T, H, W)`` (moving it to the
    device); each batch goes through every model once. Call it on every rank with the same number
    of batches. The models are left in training mode; returns the number of local batches.
    """
    layers = []
    for model in models:
        model.train()
        layers.extend(training_batchnorms(model))
    saved = [(layer.momentum, layer.num_batches_tracked.clone()) for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: after b batches, the mean of their statistics
    count = 0
    for clips in batches:
        for model in models:
            forward(model, clips)
        count += 1
    if layers:
        packed = torch.cat([torch.cat([layer.running_mean, layer.running_var]) for layer in layers]) * count
        totals = all_reduce_sum(torch.cat([packed, packed.new_tensor([count])]))
        if totals[-1] == 0:
            raise ValueError("precise BN got no batch on any rank")
        means = (totals[:-1] / totals[-1]).split([2 * layer.num_features for layer in layers])
        for layer, stats, (momentum, tracked) in zip(layers, means, saved):
            layer.running_mean.copy_(stats[: layer.num_features])
            layer.running_var.copy_(stats[layer.num_features :])
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(tracked)
    return count


class PreciseBatchNorm(TrainingSwitch):
    """``train.precise_bn_batches``: before each evaluation, :func:`recompute_bn_stats` of every model
    to evaluate over this many training batches (once per epoch and step, however many evaluations).

    It reads its own shuffle of the training set (seeded from ``train.seed + 1`` and the epoch)
    through its own DataLoader, under a forked RNG, so the training data stream and the global RNG
    are untouched."""

    name = "precise_bn"

    def __init__(self, context: SwitchContext, batches: int) -> None:
        dist_info = context.dist_info
        sampler = ResumableDistributedSampler(context.train_set, num_replicas=dist_info.world_size,
                                              rank=dist_info.rank, shuffle=True,
                                              seed=context.seed + PRECISE_BN_SEED_OFFSET, drop_last=True)
        self.loader = run_loader(EpochIndexed(context.train_set), sampler, context.batch_size, context.num_workers,
                                 dist_info.device, drop_last=True, generator=torch.Generator().manual_seed(context.seed))
        self.batches, self.device, self.amp, self.normalizer = batches, dist_info.device, context.amp, context.normalizer
        self.done: Optional[tuple[int, int]] = None  # (epoch, step) of the last recomputation

    def eval_models(self, models: NamedModels, epoch: int, step: int) -> NamedModels:
        if self.done != (epoch, step):
            self._recompute([model for _, model in models], epoch)
            self.done = (epoch, step)
        return models

    def _recompute(self, models: list[nn.Module], epoch: int) -> None:
        self.loader.sampler.set_epoch(epoch)

        def batches() -> Iterator[torch.Tensor]:
            for index, (clips, _, _) in enumerate(self.loader):
                if index == self.batches:
                    return
                clips = on_device(clips, self.device)
                yield clips.flatten(0, 1) if clips.ndim == 6 else clips  # repeat_aug: (N, k, ...) -> (N * k, ...)

        def forward(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp):
                return model(model_inputs(clips, self.device, self.normalizer))

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            recompute_bn_stats(models, batches(), forward)


def build(cfg: DictConfig, context: SwitchContext) -> Optional[PreciseBatchNorm]:
    """On when ``train.precise_bn_batches`` > 0."""
    return PreciseBatchNorm(context, cfg.train.precise_bn_batches) if cfg.train.precise_bn_batches > 0 else None
