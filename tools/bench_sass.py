"""SASS instruction counts of the CUDA kernels (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.sass`."""
import sys

from softpool3d.benchmarks.cli import sass_main

if __name__ == "__main__":
    sys.exit(sass_main())
