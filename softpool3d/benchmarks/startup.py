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

Train (``--parts train``): ``torchrun --standalone --nproc-per-node=R`` of the training entry point for
each ``--ranks`` R, ``--workers`` workers a rank, on a custom set of ``--rows`` training videos: hard
links, named like Kinetics' files, to the demo videos of ``--root`` (written once beside it,
``<root>-<rows>rows``), ``--steps`` steps, validation on one video a class, no test. Each
``--python NAME=PATH`` interpreter runs its own softpool3d (a checkout of the code before a change,
installed in its own virtual environment, and this one), taking turns (the first of one repeat
is the last of the next), each after an
untimed process that writes its index cache. Reported: seconds from the launch to rank 0's first
training step (TensorBoard's wall time of ``train/loss`` at step 1), the seconds from the launch to
the exit of the whole tree and its CPU seconds (user + system of every process, each one's exit
included: this process adopts and reaps the fork servers that outlive their ranks), and the peak over time of the
summed RSS, PSS and USS (``Private_*``) of the whole process tree (torchrun's agent, ranks, fork
servers, workers) and of the USS of the workers alone (the fork servers' children), sampled every
0.1 s from ``/proc/PID/smaps_rollup``.

    python tools/bench_startup.py --root DEMO_ROOT --checkpoint CHECKPOINT.pt [--workers 4] [--repeats 3]
    python tools/bench_startup.py --root DEMO_ROOT --parts train --rows 300000 --ranks 1 2 \
        --python before=OTHER/.venv/bin/python --python after=.venv/bin/python
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

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
    """``pid`` and its descendants (children of any of their threads: the fork server is started from one)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(child) for child in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    return pids


def _memory_mb(pids: list[int]) -> tuple[float, float, float]:
    """Summed (RSS, PSS, USS) in MB of ``pids`` (those that are gone count 0); USS is ``Private_Clean`` +
    ``Private_Dirty``, the memory that ending the process would free."""
    rss = pss = uss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    uss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024, uss / 1024


def _forked_by_server(pid: int) -> bool:
    """Whether ``pid`` is a worker forked by a fork server: it and its parent run the server's command line."""
    try:
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        return all(b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes() for p in (pid, parent))
    except (OSError, IndexError):
        return False


class TreePeak:
    """The peaks over time of a process tree's summed RSS, PSS and USS (MB), of the summed USS of its
    workers (the fork servers' children) alone, and of its process count."""

    def __init__(self) -> None:
        self.rss = self.pss = self.uss = self.workers_uss = 0.0
        self.processes = 0

    def sample(self, pid: int) -> None:
        pids = _tree(pid)
        rss, pss, uss = _memory_mb(pids)
        workers_uss = _memory_mb([p for p in pids if _forked_by_server(p)])[2]
        self.rss, self.pss, self.uss = max(self.rss, rss), max(self.pss, pss), max(self.uss, uss)
        self.workers_uss = max(self.workers_uss, workers_uss)
        self.processes = max(self.processes, len(pids))


def measure_loader(root: str, workers: int, setting: str) -> dict[str, float]:
    """The child process's first-batch seconds and its tree's peak RSS and PSS (MB)."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, root, str(workers), setting], stdout=subprocess.PIPE,
                             text=True)
    peak = TreePeak()
    while child.poll() is None:
        peak.sample(child.pid)
        time.sleep(0.02)
    out = child.stdout.read()
    if child.returncode != 0:
        raise RuntimeError(f"the {setting} loader process failed with status {child.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mb": peak.rss, "pss_mb": peak.pss}


def predict_seconds(checkpoint: str, video: str, workers: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PREDICT, checkpoint, video, "--workers", str(workers)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


_TRAIN = "import sys; from softpool3d.engine.cli import train_main; sys.exit(train_main())"
_WARM = ("import sys; from softpool3d.datasets import load_annotations as a; "
         "[a('custom', sys.argv[1], s) for s in ('train', 'val')]")


def write_rows_set(demo: Path, rows: int) -> Path:
    """A custom set (``train/<class>/``, ``val/<class>/``) beside ``demo`` of ``rows`` training videos,
    hard links named ``v<row:010d>_000000_000010.mp4`` to ``demo``'s videos of each class in turn, and
    one validation video a class; written once (``.rows`` records the count)."""
    root = demo.parent / f"{demo.name}-{rows}rows"
    marker = root / ".rows"
    if marker.is_file() and marker.read_text() == str(rows):
        return root
    sources = {folder.name: sorted(folder.glob("*.mp4")) for folder in sorted(demo.iterdir()) if folder.is_dir()}
    sources = {name: videos for name, videos in sources.items() if videos}
    if not sources:
        raise FileNotFoundError(f"no class folders of .mp4 videos in {demo}")
    classes = sorted(sources)
    links = [(sources[name][0], root / "val" / name / f"{name}_val.mp4") for name in classes]
    for row in range(rows):
        name = classes[row % len(classes)]
        links.append((sources[name][row // len(classes) % len(sources[name])],
                      root / "train" / name / f"v{row:010d}_000000_000010.mp4"))
    for name in classes:
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
    for source, link in links:
        if not link.exists():
            os.link(source, link)
    marker.write_text(str(rows))
    return root


def _first_step_wall_time(run_dir: Path) -> float:
    """TensorBoard's wall time of ``train/loss`` at step 1 in ``run_dir``."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for events in sorted(run_dir.rglob("events.out.tfevents*")):
        for event in EventFileLoader(str(events)).Load():
            if event.step == 1 and any(value.tag == "train/loss" for value in event.summary.value):
                return event.wall_time
    raise RuntimeError(f"no train/loss at step 1 in the TensorBoard files under {run_dir}")


def measure_training(python: str, root: Path, ranks: int, workers: int, steps: int, output: Path, name: str,
                     env: dict[str, str]) -> dict[str, float]:
    """One ``torchrun`` training job of ``python``'s softpool3d: seconds to the first step and the tree's peaks."""
    command = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "--no-python",
               python, "-c", _TRAIN, f"data.root={root}", "data.dataset=custom", "data.make_demo=false",
               f"data.num_workers={workers}", "data.batch_size=2", "train.device=cpu", "train.epochs=1",
               f"train.limit_steps_per_epoch={steps}", "train.val_every=1000", "train.test_after_train=false",
               f"output_dir={output}", f"name={name}"]
    load = os.getloadavg()[0]
    cpu_before = _children_cpu_s()
    launched = time.time()
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=output)
    peak = TreePeak()
    while job.poll() is None:
        peak.sample(job.pid)
        time.sleep(0.1)
    _reap_orphans()
    ended = time.time()
    if job.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {job.returncode}:\n{job.stderr.read()[-3000:]}")
    return {"first_step_s": _first_step_wall_time(output / name) - launched, "job_s": ended - launched,
            "cpu_s": _children_cpu_s() - cpu_before, "rss_mb": peak.rss, "pss_mb": peak.pss,
            "uss_mb": peak.uss, "workers_uss_mb": peak.workers_uss, "processes": peak.processes,
            "load": f"{load:.1f}-{os.getloadavg()[0]:.1f}"}


def _children_cpu_s() -> float:
    """User + system seconds of every descendant this process has reaped."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux's ``PR_SET_CHILD_SUBREAPER``): a
    fork server outlives the rank that started it by its own exit, which a job's CPU must include."""
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _reap_orphans() -> None:
    """Wait for every remaining descendant (orphans adopted by :func:`_adopt_orphans`)."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def run_training(args: argparse.Namespace) -> None:
    """The training jobs of ``--parts train``, one table row each."""
    pythons = dict(entry.split("=", 1) for entry in args.python) or {"this": sys.executable}
    root = write_rows_set(args.root.resolve(), args.rows)
    output = Path(args.output or tempfile.mkdtemp(prefix="bench-startup-")).resolve()
    output.mkdir(parents=True, exist_ok=True)  # the jobs' working folder: a checkout's softpool3d/ is not on their path
    envs = {label: {**os.environ, "SOFTPOOL3D_CACHE_DIR": str(output / f"cache-{label}")} for label in pythons}
    for label, python in pythons.items():
        subprocess.run([python, "-c", _WARM, str(root)], check=True, env=envs[label], cwd=output)
    _adopt_orphans()
    print(f"\n{args.rows} training rows ({root}), {args.workers} workers a rank, {args.steps} steps")
    print("| code | ranks | to first step (s) | job, launch to exit (s) | tree CPU (s) | peak tree RSS (MB) "
          "| peak tree PSS (MB) | peak tree USS (MB) | peak workers' USS (MB) | processes | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for repeat in range(args.repeats):
        for ranks in args.ranks:
            turns = list(pythons.items())
            for label, python in turns if repeat % 2 == 0 else turns[::-1]:  # each code first in turn
                result = measure_training(python, root, ranks, args.workers, args.steps, output,
                                          f"{label}-{ranks}-{repeat}", envs[label])
                print(f"| {label} | {ranks} | {result['first_step_s']:.2f} | {result['job_s']:.2f} | "
                      f"{result['cpu_s']:.1f} | {result['rss_mb']:.0f} | "
                      f"{result['pss_mb']:.0f} | {result['uss_mb']:.0f} | {result['workers_uss_mb']:.0f} | "
                      f"{result['processes']} | {result['load']} |",
                      flush=True)


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.startup_main` parsed."""
    if "loader" in args.parts:
        print(f"| fork server ({args.workers} workers) | to first batch (s) | peak tree RSS (MB) "
              "| peak tree PSS (MB) |")
        print("|---|---|---|---|")
        for _ in range(args.repeats):
            for setting in ("late", "early"):
                result = measure_loader(str(args.root), args.workers, setting)
                print(f"| {setting} | {result['first_batch_s']:.2f} | {result['rss_mb']:.0f} "
                      f"| {result['pss_mb']:.0f} |", flush=True)
    if "train" in args.parts:
        run_training(args)
    if "predict" not in args.parts or args.checkpoint is None:
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
