"""Clip loading from frame shards against prepared and source videos, side by side in one process:
clips/s per core (one process, one torch thread, decord with one thread) for each model's clip
geometry, shards read from disk and over HTTP on 127.0.0.1, and the bytes each form takes per hour
of video. ``tools/bench_loader.py --shards --videos-dir DIR`` (``--help`` for the options).

The settings take turns item by item (item ``i`` of every setting, then ``i + 1``), so a load that
drifts on a shared machine weighs on all of them alike. Every item is a training clip (random
start, scale, crop and flip) through the same :class:`~softpool3d.datasets.ClipDataset` code; only
the frame source differs. The process keeps its freed memory as a shard dataset's DataLoader worker
does (:func:`~softpool3d.datasets.heap.keep_freed_memory`). The HTTP server is another process on this
machine, on the cores the benchmark is not pinned to where it is pinned (``taskset -c 1`` leaves it
core 0): as a server on another host, its CPU time is neither the loader's nor taken from the
loader's core.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from softpool3d.benchmarks.range_server import serve_folder_in_process
from softpool3d.datasets import Annotations, ClipDataset, OpenVideo
from softpool3d.datasets.heap import keep_freed_memory
from softpool3d.datasets.prepare import find_videos, prepare_videos
from softpool3d.datasets.prepare_shards import prepare_shards
from softpool3d.datasets.shard_dataset import ShardDataset, ShardSet


@dataclass(frozen=True)
class Geometry:
    """A model's training clip and the short side its videos are prepared at."""

    name: str
    num_frames: int
    sampling_rate: int
    crop_size: int
    train_scale: tuple[int, int]
    short_side: int


GEOMETRIES = {
    "x3d_s": Geometry("x3d_s", 13, 6, 160, (182, 228), 182),
    "r3d_18": Geometry("r3d_18", 16, 2, 112, (128, 160), 128),
}


def _source_tree(videos: list[Path], folder: Path) -> Path:
    """A custom-layout folder (one class folder per video) of links to ``videos``."""
    for i, video in enumerate(videos):
        target = folder / f"class{i}" / video.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(video.resolve())
    return folder


def hours_of_video(videos: list[Path]) -> float:
    """The summed duration of ``videos`` in hours (frame count / fps)."""
    total = 0.0
    for video in videos:
        info = OpenVideo(video).info
        total += info.num_frames / info.fps
    return total / 3600


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink()
               and path.suffix in (".mp4", ".avi", ".mkv", ".webm", ".mov", ".tar", ".npz"))


def interleaved_rates(datasets: dict[str, ClipDataset], items: int) -> dict[str, tuple[float, float]]:
    """``(clips/s of wall time, clips/s of this process's CPU time)`` of each dataset over ``items``
    training items, the datasets taking turns item by item. CPU time counts only this process's
    cycles, so on a machine loaded by others it estimates what one idle core would give."""
    wall, cpu = dict.fromkeys(datasets, 0.0), dict.fromkeys(datasets, 0.0)
    for dataset in datasets.values():  # warm-up: open files and connections, fill caches
        dataset[0]
    for i in range(items):
        for name, dataset in datasets.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            dataset[i % len(dataset)]
            wall[name] += time.perf_counter() - started
            cpu[name] += time.process_time() - started_cpu
    return {name: (items / wall[name], items / cpu[name]) for name in datasets}


def compare(videos: list[Path], work: Path, geometry: Geometry, frame_steps: list[int], quality: int, items: int,
            workers: int) -> tuple[dict[str, tuple[float, float]], dict[str, int], float]:
    """Prepare ``videos`` as H.264 and as shards (each of ``frame_steps``) at ``geometry.short_side``, then
    time a training clip from each: ``(clips/s of wall and CPU time by setting, bytes by form, hours of video)``."""
    source = _source_tree(videos, work / "source")
    prepared = work / f"video{geometry.short_side}"
    prepare_videos(source, prepared, short_side=geometry.short_side, workers=workers, progress=False)
    shard_sets = {}
    for step in frame_steps:
        shard_sets[step] = work / f"shards{geometry.short_side}_k{step}_q{quality}"
        prepare_shards(source, shard_sets[step], dataset="custom", short_side=geometry.short_side, quality=quality,
                       frame_step=step, workers=workers, progress=False)
    relative = find_videos(source)
    options = dict(train=True, num_frames=geometry.num_frames, sampling_rate=geometry.sampling_rate,
                   crop_size=geometry.crop_size, train_scale=geometry.train_scale, hflip=True, seed=0)

    def videos_under(root: Path) -> Annotations:
        return Annotations([root / path for path in relative], list(range(len(relative))), [str(p) for p in relative])

    shard_annotations = Annotations([str(path.as_posix()) for path in relative], list(range(len(relative))),
                                    [str(p) for p in relative])
    datasets: dict[str, ClipDataset] = {
        "source video": ClipDataset(videos_under(source), **options),
        f"prepared video ({geometry.short_side})": ClipDataset(videos_under(prepared), **options),
    }
    for step, folder in shard_sets.items():
        datasets[f"shards k={step}, disk"] = ShardDataset(shard_annotations, ShardSet(folder), **options)
    sizes = {"source video": sum(video.stat().st_size for video in videos),
             f"prepared video ({geometry.short_side})": _folder_bytes(prepared)}
    sizes.update({f"shards k={step}": _folder_bytes(folder) for step, folder in shard_sets.items()})
    first = frame_steps[0]
    with serve_folder_in_process(shard_sets[first]) as url:
        datasets[f"shards k={first}, HTTP 127.0.0.1"] = ShardDataset(shard_annotations, ShardSet(url), **options)
        rates = interleaved_rates(datasets, items)
    return rates, sizes, hours_of_video(videos)


def run(args: argparse.Namespace) -> int:
    """``tools/bench_loader.py --shards``: the tables for each of ``args.geometries``."""
    torch.set_num_threads(1)
    keep_freed_memory()  # this process reads clips as a shard dataset's DataLoader worker does
    videos = sorted(p for d in args.videos_dir for p in (d / rel for rel in find_videos(d)))
    if not videos:
        raise SystemExit("--shards needs --videos-dir with videos in it")
    print(f"{len(videos)} source videos: " + ", ".join(f"{v.name} {OpenVideo(v).info.num_frames} frames" for v in videos))
    print(f"one process, torch threads 1, decord 1 thread; clips/s of wall time and of this process's CPU time; "
          f"{args.items} training clips per setting, settings interleaved; JPEG quality {args.quality}")
    for name in args.geometries:
        geometry = GEOMETRIES[name]
        with tempfile.TemporaryDirectory() as tmp:
            rates, sizes, hours = compare(videos, Path(tmp), geometry, args.frame_steps, args.quality, args.items,
                                          args.prepare_workers)
        print(f"\n{name}: {geometry.num_frames} frames every {geometry.sampling_rate}, crop {geometry.crop_size} "
              f"from short side {list(geometry.train_scale)}; prepared at short side {geometry.short_side}")
        base = rates[f"prepared video ({geometry.short_side})"]
        disk = rates[f"shards k={args.frame_steps[0]}, disk"]
        print(f"  {'setting':34s} {'clips/s (wall)':>14s} {'vs prepared':>11s} {'clips/s (CPU)':>14s} {'vs prepared':>11s}")
        for setting, (rate, cpu_rate) in rates.items():
            note = (f"  HTTP/disk {rate / disk[0]:.2f}x wall, {cpu_rate / disk[1]:.2f}x CPU (server CPU not counted)"
                    if "HTTP" in setting else "")
            print(f"  {setting:34s} {rate:14.1f} {rate / base[0]:10.2f}x {cpu_rate:14.1f} {cpu_rate / base[1]:10.2f}x{note}")
        print(f"  {'form':34s} {'GB per hour of video':>20s}")
        for form, size in sizes.items():
            print(f"  {form:34s} {size / hours / 1e9:20.2f}")
    return 0
