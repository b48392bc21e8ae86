"""SoftPool kernel benchmark: ours vs the 5-op formula, avg_pool3d and max_pool3d, forward and
forward+backward time and peak memory, as a markdown table per device (CPU, and CUDA when present).

    python tools/bench_softpool.py
    python tools/bench_softpool.py --device cpu --repeats 10
"""
from __future__ import annotations

import argparse
import platform
import sys

import torch

from softpool3d import extension
from softpool3d.op_benchmark import benchmark, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; the best is reported")
    args = parser.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda: no CUDA device is available")
        devices.remove("cuda")
    for name in devices:
        device = torch.device(name)
        fused = extension.for_device(device) is not None
        where = torch.cuda.get_device_name(device) if name == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        sys.stdout.write(f"\n### {name} ({where}; torch {torch.__version__}; kernel: {'fused' if fused else 'pure-PyTorch fallback'})\n\n")
        sys.stdout.write(markdown(benchmark(device, repeats=args.repeats)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
