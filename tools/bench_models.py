"""Model complexity and speed benchmarks (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.models`."""
import sys

from softpool3d.benchmarks.cli import models_main

if __name__ == "__main__":
    sys.exit(models_main())
