"""The dataset index at Kinetics-700 scale (``--help`` for options); the logic is :mod:`softpool3d.benchmarks.index`."""
import sys

from softpool3d.benchmarks.index import main

if __name__ == "__main__":
    sys.exit(main())
