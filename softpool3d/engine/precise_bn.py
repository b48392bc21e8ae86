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

from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from softpool3d.engine.distributed import all_reduce_sum


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
