"""The DataLoaders of a run: workers that live as long as the run, memory pinned for the GPU.

Workers are persistent (``persistent_workers=True`` when ``num_workers > 0``): a run forks them
once per loader, not again at every epoch and every validation. A persistent worker keeps its own
copy of the dataset, so ``set_epoch`` in the main process never reaches it; the training sampler
(:class:`~softpool3d.engine.processes.sampler.ResumableDistributedSampler`) therefore yields
``(epoch, index)`` pairs and :class:`EpochIndexed` sets the epoch of the worker's copy from them.

Workers ignore SIGTERM, SIGINT and SIGUSR1 (:func:`~softpool3d.datasets.freeze_inherited_objects`:
they keep serving a main process that stops after its step on them), so the SIGTERM by which
``multiprocessing`` ends leftover daemon processes at exit would not end them;
:func:`shut_down_workers` runs at exit before it and ends the workers of every loader still alive.
"""
from __future__ import annotations

import atexit
import weakref
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from softpool3d.datasets import freeze_inherited_objects, worker_context


class EpochIndexed(Dataset):
    """``dataset`` read by ``(epoch, index)`` keys: item ``(e, i)`` is ``dataset[i]`` after
    ``dataset.set_epoch(e)`` (on the copy of the process that reads it, worker or main)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def run_loader(dataset: Dataset, sampler: Optional[Sampler], batch_size: Optional[int], num_workers: int,
               device: torch.device, drop_last: bool = False, generator: Optional[torch.Generator] = None) -> DataLoader:
    """A DataLoader (``sampler`` None: the items in order; ``batch_size`` None: one item at a time) with
    persistent workers (when ``num_workers > 0``), memory pinned when ``device`` is a GPU, workers
    started by :func:`~softpool3d.datasets.worker_context` (a fork server: forking a parent that PyAV
    made multi-threaded can deadlock) and :func:`~softpool3d.datasets.freeze_inherited_objects` in
    each worker. The one way the engine (training, evaluation, prediction) builds its loaders."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                        pin_memory=device.type == "cuda", generator=generator, persistent_workers=num_workers > 0,
                        worker_init_fn=freeze_inherited_objects,
                        multiprocessing_context=worker_context() if num_workers > 0 else None)
    if num_workers > 0:
        _LOADERS.add(loader)
    return loader


_LOADERS: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()


def shut_down_workers() -> None:
    """End the persistent workers of every :func:`run_loader` loader still alive: ask them to stop and
    join them (the loader's own shutdown), then SIGKILL any that did not. Registered with
    ``atexit`` after torch's and multiprocessing's exit hooks, so it runs before them."""
    for loader in list(_LOADERS):
        iterator = loader._iterator
        if iterator is None:
            continue
        iterator._shutdown_workers()
        for worker in iterator._workers:
            if worker.is_alive():
                worker.kill()


atexit.register(shut_down_workers)


def dead_worker_signals() -> dict[int, int]:
    """``pid -> signal number`` of the :func:`run_loader` workers that a signal ended.

    A worker started from the fork server is not this process's child, so torch's own SIGCHLD
    check cannot see how it died and reports only "exited unexpectedly"; the fork server does pass
    the status on to the worker's ``Process`` object, read here.
    """
    ended = {}
    for loader in list(_LOADERS):
        iterator = loader._iterator
        for worker in iterator._workers if iterator is not None else ():
            code = worker.exitcode
            if code is not None and code < 0:
                ended[worker.pid] = -code
    return ended
