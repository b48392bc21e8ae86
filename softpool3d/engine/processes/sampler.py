"""Samplers: of training (resumable mid-epoch; ``data.sampler``: uniform or class-balanced) and of
evaluation (each item once over the ranks).

``uniform`` is :class:`ResumableDistributedSampler`: each training
video once an epoch, in a random order. ``class_balanced`` is :class:`ClassBalancedSampler`: as
many draws as videos, with replacement, each video weighted by one over its class's video count in
the training list, so each class is drawn equally often on average. Both draw an epoch's global
order from ``seed + epoch`` alone and give rank ``r`` of ``w`` the positions ``r, r + w, ...`` of
it (disjoint shares), and both resume mid-epoch by ``set_start``.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` pairs and can start an epoch part-way,
    for exact mid-epoch resume.

    The epoch travels with each index, so a dataset in a persistent DataLoader worker (which
    never sees ``set_epoch`` calls made in the main process) still draws the epoch's clips: wrap it
    in :class:`softpool3d.engine.processes.loaders.EpochIndexed`. ``set_start(n)`` skips the first ``n``
    pairs of this rank's order for the current epoch (reset by the next ``set_epoch``), without
    drawing any random numbers.

    Which items an epoch visits, and in what order, is :meth:`epoch_order` alone: a subclass (a
    class-balanced sampler, say) overrides it; padding, sharding over ranks and resume stay here.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def epoch_order(self) -> list[int]:
        """The dataset indices of epoch ``self.epoch`` over all ranks, in order: ``len(self.dataset)``
        of them, a permutation drawn from ``self.seed + self.epoch`` when shuffling (the order
        ``DistributedSampler`` draws), ``0, 1, ...`` otherwise. Must depend only on the seed and
        the epoch, so that every rank and every resumed run draws the same order."""
        if not self.shuffle:
            return list(range(len(self.dataset)))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def rank_indices(self) -> list[int]:
        """This rank's ``num_samples`` indices of :meth:`epoch_order`, padded (by repeating its start)
        or cut to ``total_size`` as ``DistributedSampler`` does, then every ``num_replicas``-th."""
        order = self.epoch_order()
        if not self.drop_last:
            padding = self.total_size - len(order)
            order += (order * math.ceil(padding / len(order)))[:padding] if padding > 0 else []
        else:
            order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, index) for index in self.rank_indices()[self.start :]])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets indices ``r, r + w, r + 2w, ...``: no padding, so every item is seen once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


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
