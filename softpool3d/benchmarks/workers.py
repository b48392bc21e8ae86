"""DataLoader worker start methods side by side: ``fork`` (torch's default on Linux before Python
3.14), ``forkserver`` as :func:`~softpool3d.datasets.worker_context` sets it up (what the engine and
the preparation tool use), and ``spawn``.

For each, in one process: the start-up of ``--workers`` workers (from ``iter(loader)`` until each
worker has returned one item) for the first loader (a fork server starts then) and the mean of the
next ``--repeats`` loaders (a validation loader every epoch), with a Kinetics-scale training index
(``--rows`` paths in a compact :class:`~softpool3d.datasets.PathList`) in the dataset, which every
start method but ``fork`` pickles into each worker; and the private memory (``Private_Dirty`` after
``gc.collect()``) of one worker with no data, with the index, and with the index after
``freeze_inherited_objects``.

    python tools/bench_workers.py [--workers 2] [--rows 300000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from softpool3d.benchmarks.index import worker_private_mb
from softpool3d.datasets import Annotations, ClipDataset, PathList, worker_context


class OneItemPerWorker(Dataset):
    """``workers`` items, each its worker's id; holds ``payload`` (pickled into each worker unless forked)."""

    def __init__(self, payload: object, workers: int) -> None:
        self.payload = payload
        self.workers = workers

    def __len__(self) -> int:
        return self.workers

    def __getitem__(self, index: int) -> int:
        return torch.utils.data.get_worker_info().id


def kinetics_scale_index(rows: int) -> ClipDataset:
    """A training ClipDataset over ``rows`` Kinetics-style paths in 700 classes (no files are opened)."""
    paths = [f"/data/k700/train/class {i % 700:03d}/{i:011d}_000000_000010.mp4" for i in range(rows)]
    return ClipDataset(Annotations(PathList.from_paths(paths), np.arange(rows) % 700, [str(i) for i in range(700)]),
                       train=True)


def startup_seconds(start_method: str, payload: object, workers: int) -> float:
    """Seconds from ``iter(loader)`` until each of ``workers`` workers has returned its one item."""
    context = worker_context() if start_method == "forkserver" else multiprocessing.get_context(start_method)
    loader = DataLoader(OneItemPerWorker(payload, workers), batch_size=None, num_workers=workers,
                        multiprocessing_context=context)
    start = time.perf_counter()
    ids = sorted(int(item) for item in loader)
    seconds = time.perf_counter() - start
    if ids != list(range(workers)):
        raise RuntimeError(f"expected one item from each of {workers} workers, got worker ids {ids}")
    return seconds


def measure(start_method: str, rows: int, workers: int, repeats: int) -> dict[str, float]:
    index = kinetics_scale_index(rows)
    first = startup_seconds(start_method, index, workers)
    later = [startup_seconds(start_method, index, workers) for _ in range(repeats)]
    return {
        "first_s": first,
        "later_s": sum(later) / len(later),
        "no_data_mb": worker_private_mb(None, False, start_method),
        "index_mb": worker_private_mb(index, False, start_method),
        "index_frozen_mb": worker_private_mb(index, True, start_method),
    }


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.workers_main` parsed."""
    print(f"| start method | first loader, {args.workers} workers (s) | later loaders (s) | worker private MB: no data "
          f"| + index of {args.rows:,} rows | + index, frozen |")
    print("|---|---|---|---|---|---|")
    for start_method in args.methods:
        result = measure(start_method, args.rows, args.workers, args.repeats)
        print(f"| {start_method} | {result['first_s']:.2f} | {result['later_s']:.2f} | {result['no_data_mb']:.1f} "
              f"| {result['index_mb']:.1f} | {result['index_frozen_mb']:.1f} |")
    return 0
