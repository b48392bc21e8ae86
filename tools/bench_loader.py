"""Clip-loading throughput: softpool3d's ClipDataset against pytorchvideo's LabeledVideoDataset.

Both decode the same generated videos, take one random clip of ``--frames`` frames every
``--rate`` frames per video, and apply the same torchvision.transforms.v2 train transform,
under DataLoader with 0, 1 and 2 workers. torchvision.io is listed too: torchvision 0.29
removed its video decoding, so that column says so when it is absent.

    python tools/bench_loader.py [--videos 24] [--clips 48]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from softpool3d.datasets import build_dataset, write_video
from softpool3d.datasets.transforms import TrainTransform


def write_videos(root: Path, count: int, frames: int, height: int, width: int) -> list[Path]:
    """Smooth gradients, a moving box and mild noise, a keyframe every second (25 frames)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        base = np.stack([xx * 200 // width, yy * 200 // height, (xx + yy + 37 * i) % 200], -1).astype(np.uint8)
        video = np.repeat(base[None], frames, 0) + rng.integers(0, 12, (frames, height, width, 1), dtype=np.uint8)
        for t in range(frames):
            video[t, 40:120, 3 * t : 3 * t + 60] = (230, 90, 30)
        path = root / f"class{i % 2}" / f"video{i:03d}.mp4"
        write_video(path, video, keyframe_interval=25)
        paths.append(path)
    return paths


class PytorchvideoClips(torch.utils.data.IterableDataset):
    """pytorchvideo's LabeledVideoDataset with the clip subsampled and transformed like ours
    (pytorchvideo.transforms cannot be imported on current torchvision)."""

    def __init__(self, paths: list[Path], decoder: str, frames: int, rate: int, fps: float, transform: TrainTransform):
        from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

        self.dataset = LabeledVideoDataset(
            [(str(p), {"label": int(p.parent.name[-1])}) for p in paths],
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
    """Clips per second over ``clips`` clips after one warm-up batch, epochs repeated as needed."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    seen, start = 0, None
    while seen < clips:
        for batch_clips, *_ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            seen += batch_clips.shape[0]
            if seen >= clips:
                break
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--video-frames", type=int, default=96)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--clips", type=int, default=48, help="clips timed per setting (after one warm-up batch)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    options = dict(num_frames=args.frames, sampling_rate=args.rate, crop_size=args.crop, train_scale=(args.crop, args.crop + 32))
    transform = TrainTransform(args.crop, (args.crop, args.crop + 32), (0.45,) * 3, (0.225,) * 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_videos(root, args.videos, args.video_frames, args.height, args.width)
        ours = build_dataset("custom", root, "train", train=True, **options)
        candidates = {
            "softpool3d (decord)": lambda: ours,
            "pytorchvideo decord": lambda: PytorchvideoClips(paths, "decord", args.frames, args.rate, 25.0, transform),
            "pytorchvideo pyav": lambda: PytorchvideoClips(paths, "pyav", args.frames, args.rate, 25.0, transform),
        }
        print(f"{args.videos} videos of {args.video_frames}x{args.height}x{args.width} h264; clip {args.frames}x{args.rate}, "
              f"crop {args.crop}; torch threads 1; clips/s")
        print(f"{'loader':<24}" + "".join(f"{f'{w} workers':>12}" for w in (0, 1, 2)))
        results = {}
        for name, make in candidates.items():
            results[name] = [clips_per_second(make(), workers, args.clips) for workers in (0, 1, 2)]
            print(f"{name:<24}" + "".join(f"{r:>12.1f}" for r in results[name]))
        tv_io = "torchvision.io.read_video" if hasattr(__import__("torchvision").io, "read_video") else None
        print(f"{'torchvision.io':<24}" + ("(present: not measured)" if tv_io else f"{'n/a: torchvision ' + __import__('torchvision').__version__ + ' has no video decoding':>36}"))
        ours_rates = results["softpool3d (decord)"]
        for name in ("pytorchvideo decord", "pytorchvideo pyav"):
            ratios = [a / b if b > 0 else math.inf for a, b in zip(ours_rates, results[name])]
            print(f"ours / {name:<17}" + "".join(f"{r:>11.2f}x" for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
