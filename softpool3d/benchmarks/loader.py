"""Clip-loading throughput: softpool3d's ClipDataset (repeat_aug 1 and 2) against pytorchvideo's
LabeledVideoDataset (decord and PyAV decoders), side by side on the same videos.

Every loader takes one random clip of ``--frames`` frames every ``--rate`` frames per video and
applies the same train transform (short-side scale in ``--scale``, ``--crop`` crop, flip,
normalize), under a DataLoader with each of ``--workers``; clips/s counts every clip delivered
(``repeat_aug=2`` delivers two per video). With several ``--videos-dir``, one run measures them
all and prints ours relative to the first folder. ``--interleaved N`` adds a table measured in
this process where the settings take turns item by item (robust to a load that drifts on a shared
machine); ``--decoders`` adds to it the cost of decoding one random clip with decord and with PyAV
(slice vs frame threading), which shows what would speed decoding up next. ``--worker-ms N``
adds the CPU time a worker spends per clip, split into decoding and the transform, before (the
transform ending in float32 normalization, as workers did until clips became uint8, and the batch
collated into shared memory in float32) and after (uint8 out and collated, normalization on the
training device); and what that normalization costs where the training device is this CPU.

The header names the ``decord`` build imported; to compare two builds, run one process per build
(e.g. ``PYTHONPATH`` pointing at a folder that holds only the other build's ``decord`` package).

    python tools/bench_loader.py                                  # generated 320x240 videos
    python tools/bench_loader.py --make-videos data/hd --videos 6 --height 720 --width 1280 --video-frames 300 --gop 250
    python tools/prepare_videos.py data/hd data/hd256 --short-side 256
    python tools/bench_loader.py --videos-dir data/hd --videos-dir data/hd256 --interleaved 16 --decoders \
        --frames 8 --rate 8 --crop 224 --scale 256 320
    python tools/bench_loader.py --videos-dir data/demo --videos-dir data/hd --worker-ms 24 --only-worker-ms
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import av
import decord
import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from softpool3d.datasets import Annotations, ClipDataset, OpenVideo
from softpool3d.datasets.prepare import find_videos
from softpool3d.datasets.sampling import random_clip
from softpool3d.datasets.transforms import TrainTransform
from softpool3d.engine.inputs import ClipNormalizer


def write_videos(root: Path, count: int, frames: int, height: int, width: int, gop: int = 25, fps: int = 25) -> list[Path]:
    """H.264 videos (x264 veryfast, crf 23, 3 B-frames, a keyframe every ``gop`` frames) whose content
    keeps the encoder busy: a blocky noise texture drifting diagonally, blended with moving colour
    gradients and a moving box; written frame by frame (any length fits in memory)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        texture = np.kron(rng.integers(0, 256, (height // 8 + 8, width // 8 + 8), dtype=np.uint8),
                          np.ones((8, 8), np.uint8)).astype(np.uint16)
        path = root / f"class{i % 2}" / f"video{i:03d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, "yuv420p", gop
            stream.options = {"crf": "23", "preset": "veryfast", "bframes": "3"}
            for t in range(frames):
                shift = (t + 7 * i) % 64
                noise = texture[shift : shift + height, (2 * t) % 64 : (2 * t) % 64 + width]
                image = np.stack([((xx + 4 * t + 50 * i) % 512) // 2, (yy + 2 * t) % 256, (xx * yy // 997 + t) % 256], -1)
                image = ((image + noise[..., None]) // 2).astype(np.uint8)
                box = slice(height // 4, height // 4 + height // 6), slice((6 * t) % width, (6 * t) % width + width // 8)
                image[box] = (230, 90, 30)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths


def labelled(paths: list[Path]) -> Annotations:
    """Videos labelled by their parent folder's name."""
    classes = sorted({p.parent.name for p in paths})
    return Annotations(list(paths), [classes.index(p.parent.name) for p in paths], classes)


class PytorchvideoClips(torch.utils.data.IterableDataset):
    """pytorchvideo's LabeledVideoDataset with the clip subsampled and transformed like ours
    (pytorchvideo.transforms cannot be imported on current torchvision)."""

    def __init__(self, annotations: Annotations, decoder: str, frames: int, rate: int, transform: TrainTransform):
        from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

        fps = OpenVideo(annotations.videos[0]).info.fps
        self.dataset = LabeledVideoDataset(
            [(str(p), {"label": label}) for p, label in zip(annotations.videos, annotations.labels)],
            make_clip_sampler("random", (frames - 1) * rate / fps + 1e-3),
            torch.utils.data.RandomSampler,
            decode_audio=False,
            decoder=decoder,
        )
        self.frames, self.transform = frames, transform

    def __iter__(self):
        for sample in self.dataset:
            video = sample["video"]
            index = torch.linspace(0, video.shape[1] - 1, self.frames).round().long()
            frames = video[:, index].permute(1, 2, 3, 0).clamp(0, 255).to(torch.uint8)
            yield self.transform(frames), sample["label"]


def clips_per_second(dataset, workers: int, clips: int, batch: int = 8) -> float:
    """Clips per second over at least ``clips`` clips after one warm-up batch, epochs repeated as needed.
    A batch of ``repeat_aug`` items ``(N, k, C, T, H, W)`` counts ``N * k`` clips."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    seen, start = 0, None
    while seen < clips:
        for batch_clips, *_ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            seen += batch_clips.shape[0] * (batch_clips.shape[1] if batch_clips.dim() == 6 else 1)
            if seen >= clips:
                break
    return seen / (time.perf_counter() - start)


def pyav_clip(path: Path, indices: list[int], thread_type: str, threads: int) -> np.ndarray:
    """Frames ``indices`` (sorted) decoded by PyAV after a seek to the keyframe before the first."""
    wanted, out = set(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = thread_type, threads
        per_frame = 1 / (stream.average_rate * stream.time_base)
        first_pts = stream.start_time or 0
        container.seek(first_pts + int(indices[0] * per_frame), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            index = round((frame.pts - first_pts) / per_frame)
            if index in wanted:
                out[index] = frame.to_ndarray(format="rgb24")
            if index >= indices[-1]:
                break
    return np.stack([out[i] for i in indices])


DECODERS = {
    "decode: decord, 1 thread": lambda p, i, _: OpenVideo(p).frames(i),
    "decode: decord, 2 clips, own starts": lambda p, i, j: OpenVideo(p).frames(sorted(set(i) | set(j))),
    "decode: PyAV, 1 thread": lambda p, i, _: pyav_clip(p, sorted(i), "SLICE", 1),
    "decode: PyAV, slice threads (2)": lambda p, i, _: pyav_clip(p, sorted(i), "SLICE", 2),
    "decode: PyAV, frame threads (2)": lambda p, i, _: pyav_clip(p, sorted(i), "FRAME", 2),
}


def interleaved(folders: dict[str, list[Path]], options: dict, repeats: list[int], items: int,
                decoders: list[str]) -> dict[tuple[str, str], float]:
    """Per (folder, setting): clips/s of our dataset in this process (``repeat_aug`` k), or ms to open a
    video and decode one random clip (a ``DECODERS`` entry). Settings take turns item by item, on the
    same video (same relative path) in every folder, so a load that drifts over the run (a shared
    machine) hits them all alike."""
    datasets = {(f, k): ClipDataset(labelled(paths), train=True, repeat_aug=k, **options)
                for f, paths in folders.items() for k in repeats}
    generator = torch.Generator().manual_seed(0)
    first = next(iter(folders.values()))
    totals = [OpenVideo(p).info.num_frames for p in first]
    span = (options["num_frames"], options["sampling_rate"])
    seconds: dict[tuple[str, str], float] = {}
    for item in range(items):
        video = item % len(first)
        clips = [random_clip(totals[video], *span, generator) for _ in range(2)]
        for folder, paths in folders.items():
            for k in repeats:
                start = time.perf_counter()
                datasets[folder, k][video]
                seconds[folder, f"softpool3d repeat_aug={k}"] = seconds.get((folder, f"softpool3d repeat_aug={k}"), 0.0) + (
                    time.perf_counter() - start) / k
            for name in decoders:
                start = time.perf_counter()
                DECODERS[name](paths[video], *clips)
                seconds[folder, name] = seconds.get((folder, name), 0.0) + time.perf_counter() - start
    return {key: (items / total if key[1].startswith("softpool3d") else 1000 * total / items)
            for key, total in seconds.items()}


def print_interleaved(table: dict[tuple[str, str], float], folders: list[str]) -> None:
    """The interleaved table: a column per folder, ours relative to the first folder and to repeat_aug=1."""
    settings = list(dict.fromkeys(setting for _, setting in table))
    print(f"{'setting':<42}" + "".join(f"{Path(f).name[-14:]:>16}" for f in folders))
    for setting in settings:
        unit = "clips/s" if setting.startswith("softpool3d") else "ms"
        print(f"{setting + ' (' + unit + ')':<42}" + "".join(f"{table[f, setting]:>16.1f}" for f in folders))
    names = [s for s in settings if s.startswith("softpool3d")]
    for name in names:
        base = table[folders[0], name]
        print(f"{name.split()[-1] + ' vs first folder':<42}" + "".join(f"{table[f, name] / base:>15.2f}x" for f in folders))
    for name in names[1:]:
        print(f"{name.split()[-1] + ' / ' + names[0].split()[-1]:<42}"
              + "".join(f"{table[f, name] / table[f, names[0]]:>15.2f}x" for f in folders))


MEAN, STD = (0.45,) * 3, (0.225,) * 3
WORKER_MS = ("decode", "transform, uint8 out", "float32 + normalize (before only)",
             "collate into shared memory, float32 (before)", "collate into shared memory, uint8 (after)",
             "before: worker total", "after: worker total", "after: normalize on a CPU device")


def _float_in_worker(clip: torch.Tensor) -> torch.Tensor:
    """What workers did after the uint8 transform until clips became uint8: torchvision's ``ToDtype``
    and ``Normalize`` on the ``(T, C, H, W)`` video, then the ``(C, T, H, W)`` float copy."""
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))])
    return normalize(tv_tensors.Video(clip.permute(1, 0, 2, 3))).as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()


def _collate_shared(clips: list[torch.Tensor]) -> torch.Tensor:
    """A batch stacked into new shared memory, as ``default_collate`` does in a DataLoader worker."""
    out = torch.empty((len(clips), *clips[0].shape), dtype=clips[0].dtype).share_memory_()
    return torch.stack(clips, out=out)


def worker_ms(paths: list[Path], options: dict, items: int, batch: int = 8) -> dict[str, float]:
    """CPU ms per clip (``time.process_time``, decord's decoding thread included) of the steps of one
    training item in this process: open and decode, the transform, the float step workers did before,
    and collating ``batch`` clips into shared memory in float32 (before) and in uint8 (after); and the
    device-side normalization when the device is this CPU. Items cycle over ``paths``."""
    transform = TrainTransform(options["crop_size"], options["train_scale"])
    normalizer, generator = ClipNormalizer(MEAN, STD), torch.Generator().manual_seed(0)
    seconds = dict.fromkeys(WORKER_MS[:5] + WORKER_MS[7:], 0.0)
    pending: dict[str, list[torch.Tensor]] = {WORKER_MS[3]: [], WORKER_MS[4]: []}
    for item in range(items):
        start = time.process_time()
        video = OpenVideo(paths[item % len(paths)])
        frames = video.frames(random_clip(video.info.num_frames, options["num_frames"], options["sampling_rate"],
                                          generator))
        decoded = time.process_time()
        clip = transform(frames, generator)
        transformed = time.process_time()
        floated_clip = _float_in_worker(clip)
        floated = time.process_time()
        normalizer(clip[None])
        seconds[WORKER_MS[7]] += time.process_time() - floated
        for name, spent in zip(WORKER_MS, (decoded - start, transformed - decoded, floated - transformed)):
            seconds[name] += spent
        pending[WORKER_MS[3]].append(floated_clip)
        pending[WORKER_MS[4]].append(clip)
        if len(pending[WORKER_MS[4]]) == batch or item == items - 1:
            for name, clips in pending.items():
                start = time.process_time()
                _collate_shared(clips)
                seconds[name] += time.process_time() - start
                clips.clear()
    ms = {name: 1000 * total / items for name, total in seconds.items()}
    ms[WORKER_MS[5]] = ms[WORKER_MS[0]] + ms[WORKER_MS[1]] + ms[WORKER_MS[2]] + ms[WORKER_MS[3]]
    ms[WORKER_MS[6]] = ms[WORKER_MS[0]] + ms[WORKER_MS[1]] + ms[WORKER_MS[4]]
    return ms


def print_worker_ms(folders: dict[str, list[Path]], options: dict, items: int) -> None:
    """The ``--worker-ms`` table: a column per folder, a row per step, then before/after."""
    table = {folder: worker_ms(paths, options, items) for folder, paths in folders.items()}
    print(f"\nworker CPU ms per clip, {items} items per folder, in this process (time.process_time)")
    print(f"{'step':<46}" + "".join(f"{Path(f).name[-14:]:>16}" for f in folders))
    for name in WORKER_MS:
        print(f"{name:<46}" + "".join(f"{table[f][name]:>16.2f}" for f in folders))
    print(f"{'after / before':<46}" + "".join(f"{table[f][WORKER_MS[6]] / table[f][WORKER_MS[5]]:>15.2f}x"
                                              for f in folders))


def loader_tables(folders: dict[str, list[Path]], args: argparse.Namespace, options: dict, transform: TrainTransform) -> None:
    """Per folder: clips/s of each loader under a DataLoader with each worker count, and the ratios."""
    header = f"{'loader':<34}" + "".join(f"{f'{w} workers':>12}" for w in args.workers)
    ours_first: dict[str, list[float]] = {}
    for folder, paths in folders.items():
        annotations = labelled(paths)
        print(f"\n{folder}\n{header}")
        results = {}
        if "ours" in args.loaders:
            for k in args.repeat_aug:
                dataset = ClipDataset(annotations, train=True, repeat_aug=k, **options)
                results[f"softpool3d repeat_aug={k}"] = [clips_per_second(dataset, w, args.clips) for w in args.workers]
        for name in [n for n in args.loaders if n != "ours"]:
            decoder = name.split("-")[1]
            make = lambda: PytorchvideoClips(annotations, decoder, args.frames, args.rate, transform)  # noqa: E731
            results[name] = [clips_per_second(make(), w, args.clips) for w in args.workers]
        for name, rates in results.items():
            print(f"{name:<34}" + "".join(f"{r:>12.1f}" for r in rates))
        ours = {name: rates for name, rates in results.items() if name.startswith("softpool3d")}
        names = list(ours)
        rows = [(f"{name.split()[-1]} / {names[0].split()[-1]}", ours[name], ours[names[0]]) for name in names[1:]]
        rows += [(f"ours / {other}", ours[names[0]], results[other])
                 for other in ("pytorchvideo-decord", "pytorchvideo-pyav") if names and other in results]
        if ours_first:
            rows += [(f"{name.split()[-1]} vs first folder", rates, ours_first[name]) for name, rates in ours.items()]
        else:
            ours_first = ours
        for label, top, bottom in rows:
            print(f"{label:<34}" + "".join(f"{a / b:>11.2f}x" for a, b in zip(top, bottom)))


def describe(paths: list[Path]) -> str:
    info = OpenVideo(paths[0])
    height, width = info.frames([0]).shape[1:3]
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    return f"{len(paths)} videos, first {width}x{height}, {info.info.num_frames} frames; {megabytes:.1f} MB"


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.loader_main` parsed."""
    # The interleaved table runs first: pytorchvideo's decord path switches decord's bridge to torch in its process.
    torch.set_num_threads(1)
    if args.make_videos:
        write_videos(args.make_videos, args.videos, args.video_frames, args.height, args.width, args.gop)
        return 0
    scale = tuple(args.scale or (args.crop, args.crop + 32))
    transform = TrainTransform(args.crop, scale)
    options = dict(num_frames=args.frames, sampling_rate=args.rate, crop_size=args.crop, train_scale=scale)
    with tempfile.TemporaryDirectory() as tmp:
        if args.videos_dir:
            folders = {str(d): [d / p for p in find_videos(d)] for d in args.videos_dir}
        else:
            folders = {"generated": write_videos(Path(tmp), args.videos, args.video_frames, args.height, args.width,
                                                 args.gop)}
        print(f"clip {args.frames}x{args.rate}, scale {scale}, crop {args.crop}; batch 8; torch threads 1; clips/s; "
              f"decord {decord.__version__} ({Path(decord.__file__).parent})")
        for folder, paths in folders.items():
            print(f"{folder}: {describe(paths)}")
        if args.worker_ms:
            print_worker_ms(folders, options, args.worker_ms)
        if args.only_worker_ms:
            return 0
        if args.interleaved:
            decoders = list(DECODERS) if args.decoders else ["decode: decord, 1 thread"]
            print(f"\ninterleaved, {args.interleaved} items per setting, in this process (0 workers)")
            print_interleaved(interleaved(folders, options, args.repeat_aug, args.interleaved, decoders), list(folders))
        if not args.only_interleaved:
            loader_tables(folders, args, options, transform)
    return 0
