"""SASS instruction counts of the CUDA kernels (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.sass`."""
import sys

from softpool3d.benchmarks.sass import main

if __name__ == "__main__":
    sys.exit(main())
