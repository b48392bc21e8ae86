"""Command lines of the benchmark scripts (``tools/bench_*.py``, ``tools/compare_decoders.py``).

The arguments are parsed before anything imports torch (each benchmark module is imported after
parsing, and its ``run(args)`` does the work), so ``--help`` answers at once. A benchmark's
description is its module's docstring, read from the source so that the module is not imported.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Optional, Sequence

LOADERS = ("ours", "pytorchvideo-decord", "pytorchvideo-pyav")
START_METHODS = ("fork", "forkserver", "spawn")
DROPIN_CASES = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s",
                "swin3d_b", "resnet18", "googlenet", "vgg11")
"""The names of :data:`softpool3d.benchmarks.dropin.CASES` (a test checks they agree)."""
OP_USAGE = """SoftPool kernel benchmark: ours vs the 5-op formula, avg_pool3d and max_pool3d, forward and
forward+backward time and peak memory, as a markdown table per device (CPU, and CUDA when present).

    python tools/bench_softpool.py
    python tools/bench_softpool.py --device cpu --repeats 10
"""


def module_doc(name: str) -> str:
    """The docstring of ``softpool3d.benchmarks.<name>`` as its ``__doc__`` reads, without importing it."""
    source = Path(__file__).with_name(f"{name}.py").read_text()
    return ast.get_docstring(ast.parse(source), clean=False) or ""


def _parser(name: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=module_doc(name), formatter_class=argparse.RawDescriptionHelpFormatter)


def loader_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/bench_loader.py``: clip-loading throughput, ours vs pytorchvideo."""
    parser = _parser("loader")
    parser.add_argument("--videos-dir", action="append", type=Path, default=[],
                        help="a folder of videos (labels: parent folder names); repeat to compare folders")
    parser.add_argument("--make-videos", type=Path, help="only write generated videos to this folder and exit")
    parser.add_argument("--videos", type=int, default=24, help="generated videos")
    parser.add_argument("--video-frames", type=int, default=96)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--gop", type=int, default=25, help="keyframe interval of generated videos")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--scale", type=int, nargs=2, default=None, help="short-side range (default: crop, crop+32)")
    parser.add_argument("--clips", type=int, default=48, help="clips timed per setting (after one warm-up batch)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loaders", nargs="+", choices=LOADERS, default=list(LOADERS))
    parser.add_argument("--repeat-aug", type=int, nargs="+", default=[1, 2], help="our loader's repeat_aug values")
    parser.add_argument("--decoders", action="store_true", help="also time one clip's decode per decoder")
    parser.add_argument("--interleaved", type=int, default=0, metavar="ITEMS",
                        help="also measure ours (0 workers) and the decoders over ITEMS items, settings taking turns")
    parser.add_argument("--only-interleaved", action="store_true", help="skip the DataLoader table")
    parser.add_argument("--worker-ms", type=int, default=0, metavar="ITEMS",
                        help="also measure a worker's CPU ms per clip (decode, transform; before/after uint8 clips)")
    parser.add_argument("--only-worker-ms", action="store_true", help="only the --worker-ms table")
    parser.add_argument("--shards", action="store_true",
                        help="instead: frame shards vs prepared and source video, per model geometry (needs --videos-dir)")
    parser.add_argument("--geometries", nargs="+", choices=("x3d_s", "r3d_18"), default=["x3d_s", "r3d_18"])
    parser.add_argument("--frame-steps", type=int, nargs="+", default=[1], help="--shards: frame steps k to prepare")
    parser.add_argument("--quality", type=int, default=90, help="--shards: JPEG quality")
    parser.add_argument("--items", type=int, default=60, help="--shards: training clips timed per setting")
    parser.add_argument("--prepare-workers", type=int, default=1, help="--shards: processes preparing the videos")
    args = parser.parse_args(argv)
    if args.shards:
        from softpool3d.benchmarks.shard_loader import run as run_shards

        return run_shards(args)
    from softpool3d.benchmarks.loader import run

    return run(args)


def models_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/bench_models.py``: model complexity or training-step speed per pool."""
    parser = _parser("models")
    parser.add_argument("what", choices=["complexity", "speed"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true", help="run in torch.channels_last_3d")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    args = parser.parse_args(argv)
    from softpool3d.benchmarks.models import run

    return run(args)


def op_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/bench_softpool.py``: the SoftPool op against the pools of PyTorch and the 5-op formula."""
    parser = argparse.ArgumentParser(description=OP_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; the best is reported")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    from softpool3d.benchmarks.op import run

    return run(args)


def sass_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/bench_sass.py``: SASS instruction counts per CUDA kernel."""
    parser = argparse.ArgumentParser(description=module_doc("sass").splitlines()[0])
    parser.add_argument("--csrc", type=Path, default=None, help="the csrc folder to compile")
    parser.add_argument("--dtype", nargs="+", default=["float", "c10::BFloat16", "double"],
                        help="element types of the kernels to count (C++ names)")
    parser.add_argument("--index", nargs="+", default=["int"], help="index types of the kernels to count (int, long)")
    args = parser.parse_args(argv)
    from softpool3d.benchmarks.sass import run

    return run(args)


def dropin_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/bench_dropin.py``: torchvision's networks with their own pools vs SoftPool."""
    parser = _parser("dropin")
    parser.add_argument("--only", nargs="+", choices=sorted(DROPIN_CASES), help="cases to run (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per case, after one warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    from softpool3d.benchmarks.dropin import run

    return run(args)


def workers_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/bench_workers.py``: DataLoader worker start methods side by side."""
    parser = _parser("workers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=300_000, help="paths in the training index")
    parser.add_argument("--repeats", type=int, default=3, help="loaders timed after the first")
    parser.add_argument("--methods", nargs="+", choices=START_METHODS, default=list(START_METHODS))
    args = parser.parse_args(argv)
    from softpool3d.benchmarks.workers import run

    return run(args)


def startup_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/bench_startup.py``: start-up and memory of a process with workers, and of a one-video predict."""
    parser = _parser("startup")
    parser.add_argument("--root", type=Path, required=True, help="a demo set (UCF-101 layout) to load")
    parser.add_argument("--checkpoint", type=Path, help="also time a one-video softpool3d-predict of this checkpoint")
    parser.add_argument("--video", type=Path, help="the video predicted (default: the first under --root)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=("loader", "train", "predict"), default=["loader", "predict"],
                        help="what to measure (default: loader predict)")
    parser.add_argument("--rows", type=int, default=300_000, help="training videos of the train part's set")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="torchrun processes of the train part")
    parser.add_argument("--steps", type=int, default=2, help="training steps of each train-part job")
    parser.add_argument("--python", action="append", default=[], metavar="NAME=PATH",
                        help="an interpreter whose softpool3d the train part runs (repeat; default: this one)")
    parser.add_argument("--output", type=Path,
                        help="run folders and index caches of the train part (default: a temporary folder)")
    args = parser.parse_args(argv)
    from softpool3d.benchmarks.startup import run

    return run(args)


def decoders_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/compare_decoders.py``: decord builds against PyAV on the test fixtures."""
    parser = _parser("decoders")
    parser.add_argument("--python", action="append", required=True,
                        help="an interpreter whose decord to compare (repeat; numpy and decord are all it needs)")
    parser.add_argument("--root", type=Path, help="write the fixtures here (default: a temporary folder)")
    args = parser.parse_args(argv)
    from softpool3d.benchmarks.decoders import run

    return run(args)
