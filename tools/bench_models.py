"""Model complexity and speed benchmarks (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.models`."""
import sys

from softpool3d.benchmarks.models import main

if __name__ == "__main__":
    sys.exit(main())
