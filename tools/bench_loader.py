"""Clip-loading throughput, ours vs pytorchvideo (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.loader`."""
import sys

from softpool3d.benchmarks.loader import main

if __name__ == "__main__":
    sys.exit(main())
