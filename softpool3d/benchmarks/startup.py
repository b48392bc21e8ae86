"""Start-up and memory of a process with DataLoader workers, and of a one-video prediction.

Loader: each setting runs in a fresh process that does what a training rank does before its
first step (build the model of the demo config, the training set of ``--root``, a loader of
``--workers`` workers started by :func:`~softpool3d.datasets.worker_context`) and reads one batch.
``late`` starts the fork server when the loader starts its workers; ``early`` calls
:func:`~softpool3d.datasets.start_worker_server` before building the model, as the engine does.
Reported: seconds from the process's start to its first batch, and the peak over time of the
summed RSS and PSS of its whole process tree (main, fork server, workers), sampled every 20 ms.

Predict: the wall time of ``softpool3d-predict CHECKPOINT VIDEO`` with ``--workers`` decoding
workers and with ``--workers 0`` (in-process), side by side, ``--repeats`` times each.

    python tools/bench_startup.py --root DEMO_ROOT --checkpoint CHECKPOINT.pt [--workers 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_CHILD = """
import json, sys, time
start = time.perf_counter()
from softpool3d.benchmarks.startup import first_batch
seconds = first_batch(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "early")
print(json.dumps({"first_batch_s": seconds + time.perf_counter() - start}))
"""

_PREDICT = "import sys; from softpool3d.engine.cli import predict_main; sys.exit(predict_main(sys.argv[1:]))"


def first_batch(root: str, workers: int, early: bool) -> float:
    """Seconds from this call to the first batch of a training loader of ``workers`` workers over ``root``."""
    start = time.perf_counter()
    from softpool3d.datasets import start_worker_server

    if early:
        start_worker_server()
    from softpool3d.engine import builders
    from softpool3d.engine.config import load_config
    from softpool3d.engine.processes.loaders import EpochIndexed, run_loader
    import torch

    cfg = load_config(None, [f"data.root={root}", "data.make_demo=false", f"data.num_workers={workers}",
                             "data.batch_size=2"])
    builders.build_architecture(cfg, 8)
    train_set = builders.build_dataset(cfg, cfg.data.train_split, train=True)
    sampler = [(0, index) for index in range(len(train_set))]
    loader = run_loader(EpochIndexed(train_set), sampler, 2, workers, torch.device("cpu"))
    next(iter(loader))
    return time.perf_counter() - start


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            todo += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            pass
    return pids


def _memory_mb(pids: list[int]) -> tuple[float, float]:
    """Summed (RSS, PSS) in MB of ``pids`` (those that are gone count 0)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def measure_loader(root: str, workers: int, setting: str) -> dict[str, float]:
    """The child process's first-batch seconds and its tree's peak RSS and PSS (MB)."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, root, str(workers), setting], stdout=subprocess.PIPE,
                             text=True)
    peak_rss = peak_pss = 0.0
    while child.poll() is None:
        rss, pss = _memory_mb(_tree(child.pid))
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.02)
    out = child.stdout.read()
    if child.returncode != 0:
        raise RuntimeError(f"the {setting} loader process failed with status {child.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mb": peak_rss, "pss_mb": peak_pss}


def predict_seconds(checkpoint: str, video: str, workers: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PREDICT, checkpoint, video, "--workers", str(workers)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.startup_main` parsed."""
    print(f"| fork server ({args.workers} workers) | to first batch (s) | peak tree RSS (MB) | peak tree PSS (MB) |")
    print("|---|---|---|---|")
    for _ in range(args.repeats):
        for setting in ("late", "early"):
            result = measure_loader(str(args.root), args.workers, setting)
            print(f"| {setting} | {result['first_batch_s']:.2f} | {result['rss_mb']:.0f} | {result['pss_mb']:.0f} |",
                  flush=True)
    if args.checkpoint is None:
        return 0
    video = str(args.video or next(iter(sorted(Path(args.root).rglob("*.mp4")))))
    print(f"\n| one-video predict | --workers {args.workers} (s) | --workers 0 (s) | ratio |")
    print("|---|---|---|---|")
    for _ in range(args.repeats):
        with_workers = predict_seconds(str(args.checkpoint), video, args.workers)
        in_process = predict_seconds(str(args.checkpoint), video, 0)
        print(f"| {Path(video).name} | {with_workers:.2f} | {in_process:.2f} | {with_workers / in_process:.2f} |",
              flush=True)
    return 0
