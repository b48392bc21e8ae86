"""Clip-loading throughput, ours vs pytorchvideo (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.loader`."""
import sys

from softpool3d.benchmarks.cli import loader_main

if __name__ == "__main__":
    sys.exit(loader_main())
