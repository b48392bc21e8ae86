"""The training sampler a config asks for (``data.sampler``), and the class-balanced one.

``uniform`` is :class:`~softpool3d.engine.distributed.ResumableDistributedSampler`: each training
video once an epoch, in a random order. ``class_balanced`` is :class:`ClassBalancedSampler`: as
many draws as videos, with replacement, each video weighted by one over its class's video count in
the training list, so each class is drawn equally often on average. Both draw an epoch's global
order from ``seed + epoch`` alone and give rank ``r`` of ``w`` the positions ``r, r + w, ...`` of
it (disjoint shares), and both resume mid-epoch by ``set_start``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from softpool3d.engine.distributed import DistInfo, ResumableDistributedSampler


class ClassBalancedSampler(ResumableDistributedSampler):
    """``len(dataset)`` draws per epoch, with replacement, index ``i`` with probability
    proportional to ``1 / count(labels[i])``. Only the epoch's order differs from the base class."""

    def __init__(self, dataset: Dataset, labels: Sequence[int], *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        labels = torch.as_tensor(list(labels), dtype=torch.long)
        if len(labels) != len(dataset):
            raise ValueError(f"class-balanced sampling needs one label per item: {len(labels)} labels, "
                             f"{len(dataset)} items")
        self.weights = 1.0 / torch.bincount(labels).double()[labels]

    def epoch_order(self) -> list[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist()


def build_train_sampler(cfg: DictConfig, dataset: Dataset, dist_info: DistInfo) -> ResumableDistributedSampler:
    """``data.sampler`` over ``dataset`` (whose ``labels`` are the training list's) for this rank,
    seeded with ``train.seed``, dropping the last uneven share."""
    options = dict(num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=cfg.train.seed,
                   drop_last=True)
    if cfg.data.sampler == "class_balanced":
        return ClassBalancedSampler(dataset, dataset.labels, **options)
    return ResumableDistributedSampler(dataset, **options)
